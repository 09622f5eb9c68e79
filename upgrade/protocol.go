package upgrade

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
)

// The hand-over protocol runs over a unix stream socket that the parent
// passes to the child as file descriptor 3. Every message is a frame:
//
//	offset size field
//	0      4    magic "HSUP"
//	4      1    major version of the sender
//	5      1    minor version of the sender
//	6      1    message type
//	7      1    reserved, zero
//	8      4    payload length, big endian
//	12     n    payload
//
// The 12-byte header is frozen across all versions, so a peer speaking any
// version can always read the other's version and refuse cleanly. Peers with
// the same major version interoperate; a higher minor version may only add
// fields at the end of a payload, which older peers ignore.
//
// Messages, in order:
//
//	parent → child  hello   files, state and sections (see encodeHello)
//	child  → parent refuse  UTF-8 reason (instead of ready; child exits)
//	child  → parent ready   empty
//	parent → child  commit     empty: probation passed, the child now serves alone
//	child  → parent committed  empty: the child took over (it may upgrade now)
//
// The files themselves travel as inherited descriptors 4, 5, … in the order of
// the names in the hello message.

// Version is a hand-over protocol version.
type Version struct {
	Major, Minor uint8
}

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// The hand-over protocol version this package speaks.
const (
	ProtocolMajor = 1
	ProtocolMinor = 1
)

// protocolVersion is ProtocolMajor.ProtocolMinor; never modified.
var protocolVersion = Version{Major: ProtocolMajor, Minor: ProtocolMinor}

const (
	frameMagic      = "HSUP"
	frameHeaderSize = 12

	// MaxStateSize is the largest state blob a snapshot callback may return.
	MaxStateSize = 64 << 20
	// maxFrameSize bounds every payload: the state blob plus the file names.
	maxFrameSize = MaxStateSize + 1<<20
	maxFiles     = 1024
	maxNameLen   = 4096
	// maxSections and maxSectionSize bound the package's own hand-over
	// sections (protocol 1.1), such as the TLS session ticket keys.
	maxSections    = 64
	maxSectionSize = 1 << 20
)

type msgType uint8

const (
	msgHello     msgType = 1
	msgReady     msgType = 2
	msgRefuse    msgType = 3
	msgCommit    msgType = 4
	msgCommitted msgType = 5
)

func (t msgType) String() string {
	switch t {
	case msgHello:
		return "hello"
	case msgReady:
		return "ready"
	case msgRefuse:
		return "refuse"
	case msgCommit:
		return "commit"
	case msgCommitted:
		return "committed"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

type frame struct {
	version Version
	typ     msgType
	payload []byte
}

// writeFrame writes one frame with the version v.
func writeFrame(w io.Writer, v Version, typ msgType, payload []byte) error {
	if len(payload) > maxFrameSize {
		return fmt.Errorf("write %s: payload of %d bytes exceeds %d", typ, len(payload), maxFrameSize)
	}
	buf := make([]byte, frameHeaderSize+len(payload))
	copy(buf, frameMagic)
	buf[4], buf[5], buf[6] = v.Major, v.Minor, byte(typ)
	binary.BigEndian.PutUint32(buf[8:], uint32(len(payload)))
	copy(buf[frameHeaderSize:], payload)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one frame. It checks only the framing, not the version:
// the caller decides what to do with a peer of another version.
func readFrame(r io.Reader) (frame, error) {
	var hdr [frameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return frame{}, err
	}
	f, n, err := decodeHeader(hdr[:])
	if err != nil {
		return frame{}, err
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(r, f.payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return frame{}, fmt.Errorf("read %s payload: %w", f.typ, err)
	}
	return f, nil
}

func decodeHeader(hdr []byte) (frame, int, error) {
	if len(hdr) < frameHeaderSize {
		return frame{}, 0, fmt.Errorf("%w: short header (%d bytes)", ErrProtocol, len(hdr))
	}
	if string(hdr[:4]) != frameMagic {
		return frame{}, 0, fmt.Errorf("%w: bad magic %q", ErrProtocol, hdr[:4])
	}
	f := frame{version: Version{hdr[4], hdr[5]}, typ: msgType(hdr[6])}
	n := binary.BigEndian.Uint32(hdr[8:])
	if n > maxFrameSize {
		return frame{}, 0, fmt.Errorf("%w: %s payload of %d bytes exceeds %d", ErrProtocol, f.typ, n, maxFrameSize)
	}
	return f, int(n), nil
}

// hello is the parent's first message.
type hello struct {
	parentPID int
	names     []string // names[i] is inherited as descriptor firstFileFD+i
	state     []byte
	// sections are the package's own blobs by name (since 1.1), kept apart
	// from the application's state.
	sections map[string][]byte
}

// encodeHello lays out a hello payload:
//
//	u32 parent pid | u16 n | n × (u16 len | name) | u32 len | state   (1.0)
//	u16 m | m × (u16 len | name | u32 len | data)                     (1.1)
//
// A 1.0 peer stops reading after the state; sections are sorted by name.
func encodeHello(h hello) ([]byte, error) {
	if len(h.names) > maxFiles {
		return nil, fmt.Errorf("%d files exceed the limit of %d", len(h.names), maxFiles)
	}
	if len(h.state) > MaxStateSize {
		return nil, fmt.Errorf("state blob of %d bytes exceeds MaxStateSize (%d)", len(h.state), MaxStateSize)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(h.parentPID))
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.names)))
	for _, n := range h.names {
		if len(n) == 0 || len(n) > maxNameLen {
			return nil, fmt.Errorf("file name %q: length must be 1..%d", n, maxNameLen)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(n)))
		b = append(b, n...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(h.state)))
	b = append(b, h.state...)
	if len(h.sections) > maxSections {
		return nil, fmt.Errorf("%d hand-over sections exceed the limit of %d", len(h.sections), maxSections)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.sections)))
	for _, name := range slices.Sorted(maps.Keys(h.sections)) {
		data := h.sections[name]
		if len(name) == 0 || len(name) > maxNameLen {
			return nil, fmt.Errorf("section name %q: length must be 1..%d", name, maxNameLen)
		}
		if len(data) > maxSectionSize {
			return nil, fmt.Errorf("section %q: %d bytes exceed %d", name, len(data), maxSectionSize)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	return b, nil
}

// decodeHello parses a hello payload from the parent. It never panics and
// never allocates more than the payload's size.
func decodeHello(p []byte) (hello, error) {
	var h hello
	d := decoder{b: p}
	h.parentPID = int(d.u32())
	n := int(d.u16())
	if n > maxFiles {
		return hello{}, fmt.Errorf("%w: hello lists %d files, limit %d", ErrProtocol, n, maxFiles)
	}
	seen := make(map[string]bool, n)
	for i := 0; i < n && d.err == nil; i++ {
		l := int(d.u16())
		name := string(d.bytes(l))
		if d.err != nil {
			break
		}
		if l == 0 || l > maxNameLen {
			return hello{}, fmt.Errorf("%w: hello file %d: name length %d", ErrProtocol, i, l)
		}
		if seen[name] {
			return hello{}, fmt.Errorf("%w: hello names file %q twice", ErrProtocol, name)
		}
		seen[name] = true
		h.names = append(h.names, name)
	}
	l := int(d.u32())
	if d.err == nil && l > MaxStateSize {
		return hello{}, fmt.Errorf("%w: hello state of %d bytes exceeds %d", ErrProtocol, l, MaxStateSize)
	}
	h.state = d.bytes(l)
	if d.err != nil {
		return hello{}, fmt.Errorf("%w: hello: %v", ErrProtocol, d.err)
	}
	if len(d.b) == 0 {
		return h, nil // a 1.0 parent: no sections
	}
	m := int(d.u16())
	if m > maxSections {
		return hello{}, fmt.Errorf("%w: hello lists %d sections, limit %d", ErrProtocol, m, maxSections)
	}
	for i := 0; i < m && d.err == nil; i++ {
		nl := int(d.u16())
		name := string(d.bytes(nl))
		dl := int(d.u32())
		if d.err == nil && (nl == 0 || nl > maxNameLen || dl > maxSectionSize) {
			return hello{}, fmt.Errorf("%w: hello section %d: name length %d, data length %d", ErrProtocol, i, nl, dl)
		}
		data := d.bytes(dl)
		if d.err != nil {
			break
		}
		if _, dup := h.sections[name]; dup {
			return hello{}, fmt.Errorf("%w: hello names section %q twice", ErrProtocol, name)
		}
		if h.sections == nil {
			h.sections = make(map[string][]byte, m)
		}
		h.sections[name] = data
	}
	if d.err != nil {
		return hello{}, fmt.Errorf("%w: hello sections: %v", ErrProtocol, d.err)
	}
	// Trailing bytes are fields of a newer minor version: ignore them.
	return h, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = fmt.Errorf("truncated: want %d bytes, have %d", n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u16() uint16 {
	if b := d.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}
