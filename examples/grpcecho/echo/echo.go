// Package echo is the gRPC service of examples/grpcecho, declared by hand
// instead of generated from a .proto file so that the example builds with
// the Go toolchain alone. Its messages are protobuf's well-known
// StringValue, so any gRPC client can call it:
//
//	service hotswap.examples.Echo {
//	  rpc Unary(google.protobuf.StringValue) returns (google.protobuf.StringValue);
//	  rpc Chat(stream google.protobuf.StringValue) returns (stream google.protobuf.StringValue);
//	}
package echo

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hotswapgo/hotswap/upgrade"
	"github.com/hotswapgo/hotswap/upgrade/grpcdrain"
)

// ServiceName is the service's full name.
const ServiceName = "hotswap.examples.Echo"

// Server is what an implementation of the service provides.
type Server interface {
	// Unary answers one message.
	Unary(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
	// Chat answers every message of the stream.
	Chat(stream grpc.BidiStreamingServer[wrapperspb.StringValue, wrapperspb.StringValue]) error
}

// ServiceDesc describes the service to grpc.
var ServiceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Unary",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			call := func(ctx context.Context, req any) (any, error) {
				return srv.(Server).Unary(ctx, req.(*wrapperspb.StringValue))
			}
			if interceptor == nil {
				return call(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + ServiceName + "/Unary"}, call)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName: "Chat",
		Handler: func(srv any, stream grpc.ServerStream) error {
			return srv.(Server).Chat(&grpc.GenericServerStream[wrapperspb.StringValue, wrapperspb.StringValue]{ServerStream: stream})
		},
		ServerStreams: true,
		ClientStreams: true,
	}},
}

// Register registers impl on s.
func Register(s grpc.ServiceRegistrar, impl Server) { s.RegisterService(&ServiceDesc, impl) }

// Client calls the service.
type Client struct{ cc grpc.ClientConnInterface }

// NewClient returns a client using cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc} }

// Unary calls Unary.
func (c *Client) Unary(ctx context.Context, in string, opts ...grpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	if err := c.cc.Invoke(ctx, "/"+ServiceName+"/Unary", wrapperspb.String(in), out, opts...); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

// Chat opens a Chat stream.
func (c *Client) Chat(ctx context.Context, opts ...grpc.CallOption) (grpc.BidiStreamingClient[wrapperspb.StringValue, wrapperspb.StringValue], error) {
	s, err := c.cc.NewStream(ctx, &ServiceDesc.Streams[0], "/"+ServiceName+"/Chat", opts...)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[wrapperspb.StringValue, wrapperspb.StringValue]{ClientStream: s}, nil
}

// Service answers every message with its Name (grpcecho uses its pid)
// followed by the message, so that clients see who served them. Its Chat
// streams end with grpcdrain.ErrReconnect when the server drains.
type Service struct{ Name string }

// Unary answers "Name in".
func (s Service) Unary(_ context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	return wrapperspb.String(s.Name + " " + in.GetValue()), nil
}

// Chat answers every message until the client closes the stream, or until
// the server drains: then it ends the stream with grpcdrain.ErrReconnect,
// which tells the client to open it again, on the process that took over.
func (s Service) Chat(stream grpc.BidiStreamingServer[wrapperspb.StringValue, wrapperspb.StringValue]) error {
	type received struct {
		msg *wrapperspb.StringValue
		err error
	}
	ctx := stream.Context()
	recv := make(chan received)
	go func() {
		for {
			m, err := stream.Recv()
			select {
			case recv <- received{m, err}:
			case <-ctx.Done(): // the handler returned
				return
			}
			if err != nil {
				return
			}
		}
	}()
	drain := upgrade.NoticeFrom(ctx)
	for {
		select {
		case <-drain.Done():
			return grpcdrain.ErrReconnect
		case r := <-recv:
			if errors.Is(r.err, io.EOF) {
				return nil // the client closed its side
			}
			if r.err != nil {
				return r.err
			}
			if err := stream.Send(wrapperspb.String(s.Name + " " + r.msg.GetValue())); err != nil {
				return err
			}
		}
	}
}
