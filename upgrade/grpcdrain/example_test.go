package grpcdrain_test

import (
	"context"
	"log"
	"time"

	"github.com/hotswapgo/hotswap/examples/grpcecho/echo"
	"github.com/hotswapgo/hotswap/upgrade"
	"github.com/hotswapgo/hotswap/upgrade/grpcdrain"
)

// A gRPC service upgraded without a failed call. Compile-only: it needs a
// port and signals.
func Example() {
	u, err := upgrade.New(upgrade.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	ln, err := u.Listen(context.Background(), "tcp", ":50051")
	if err != nil {
		log.Fatal(err)
	}
	s := grpcdrain.NewServer(grpcdrain.Options{}) // grpc.ServerOptions may follow
	echo.Register(s, echo.Service{Name: "v2"})    // its Chat returns ErrReconnect on the drain notice
	go s.Serve(ln)
	u.Ready()
	<-u.Exit()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Drain(ctx); err != nil {
		log.Print(err)
	}
}
