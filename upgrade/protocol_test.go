package upgrade

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHelloRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    hello
	}{
		{"empty", hello{parentPID: 1}},
		{"files", hello{parentPID: 4242, names: []string{"tcp:127.0.0.1:8080", "unix:/run/x.sock", stderrName}}},
		{"state", hello{parentPID: 7, names: []string{"f"}, state: bytes.Repeat([]byte{0, 1, 0xff}, 1000)}},
		{"sections", hello{parentPID: 8, state: []byte("s"), sections: map[string][]byte{ticketKeysSection: {1, 2, 3}, "hotswap/empty": {}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := encodeHello(tt.h)
			if err != nil {
				t.Fatalf("encodeHello() = %v", err)
			}
			var buf bytes.Buffer
			if err := writeFrame(&buf, protocolVersion, msgHello, p); err != nil {
				t.Fatalf("writeFrame() = %v", err)
			}
			f, err := readFrame(&buf)
			if err != nil {
				t.Fatalf("readFrame() = %v", err)
			}
			if f.version != protocolVersion || f.typ != msgHello {
				t.Errorf("frame = %v %v; want %v hello", f.version, f.typ, protocolVersion)
			}
			got, err := decodeHello(f.payload)
			if err != nil {
				t.Fatalf("decodeHello() = %v", err)
			}
			if !helloEqual(got, tt.h) {
				t.Errorf("decodeHello() = %+v; want %+v", got, tt.h)
			}
		})
	}
}

func helloEqual(a, b hello) bool {
	return a.parentPID == b.parentPID && slices.Equal(a.names, b.names) && bytes.Equal(a.state, b.state) &&
		maps.EqualFunc(a.sections, b.sections, bytes.Equal)
}

func TestHelloNewerMinorIgnoresTrailingFields(t *testing.T) {
	p, _ := encodeHello(hello{parentPID: 9, names: []string{"a"}, state: []byte("s"), sections: map[string][]byte{"k": []byte("v")}})
	h, err := decodeHello(append(p, "future field"...))
	if err != nil || string(h.state) != "s" || string(h.sections["k"]) != "v" {
		t.Errorf("decodeHello(with trailing bytes) = %+v, %v; want state \"s\", section k=v, nil", h, err)
	}
}

// TestHelloFromOlderMinor reads a hello laid out by a 1.0 parent, which
// ends after the state.
func TestHelloFromOlderMinor(t *testing.T) {
	p, _ := encodeHello(hello{parentPID: 9, names: []string{"a"}, state: []byte("s")})
	p = p[:len(p)-2] // a 1.0 parent writes no section count
	h, err := decodeHello(p)
	if err != nil || string(h.state) != "s" || h.sections != nil {
		t.Errorf("decodeHello(1.0 hello) = %+v, %v; want state \"s\", no sections", h, err)
	}
}

func TestTicketKeysRoundTrip(t *testing.T) {
	keys := []ticketKey{{created: time.Unix(1700000000, 5)}, {created: time.Unix(1600000000, 0)}}
	keys[0].key[0], keys[1].key[31] = 1, 2
	got, err := decodeTicketKeys(encodeTicketKeys(keys))
	if err != nil || len(got) != 2 || got[0].key != keys[0].key || got[1].key != keys[1].key || !got[0].created.Equal(keys[0].created) {
		t.Errorf("decodeTicketKeys(encodeTicketKeys(%v)) = %v, %v", keys, got, err)
	}
	for _, bad := range [][]byte{nil, {1}, {2, 0, 0}, {1, 0, 1, 0}, {1, 0xff, 0xff}} {
		if _, err := decodeTicketKeys(bad); !errors.Is(err, ErrProtocol) {
			t.Errorf("decodeTicketKeys(%x) = %v; want %v", bad, err, ErrProtocol)
		}
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	valid, _ := encodeHello(hello{parentPID: 1, names: []string{"a", "b"}, state: []byte("xyz")})
	dup, _ := encodeHello(hello{parentPID: 1, names: []string{"a", "a"}})
	tests := []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"truncated pid", valid[:3]},
		{"truncated names", valid[:9]},
		{"truncated state", valid[:len(valid)-1]},
		{"duplicate name", dup},
		{"empty name", []byte{0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"too many files", []byte{0, 0, 0, 1, 0xff, 0xff}},
		{"huge state", []byte{0, 0, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if h, err := decodeHello(tt.payload); !errors.Is(err, ErrProtocol) {
				t.Errorf("decodeHello() = %+v, %v; want %v", h, err, ErrProtocol)
			}
		})
	}

	frames := []struct {
		name string
		data []byte
	}{
		{"bad magic", []byte("HTTP/1.1 200 OK\r\n")},
		{"oversized", []byte("HSUP\x01\x00\x01\x00\xff\xff\xff\xff")},
	}
	for _, tt := range frames {
		t.Run(tt.name, func(t *testing.T) {
			if f, err := readFrame(bytes.NewReader(tt.data)); !errors.Is(err, ErrProtocol) {
				t.Errorf("readFrame() = %+v, %v; want %v", f, err, ErrProtocol)
			}
		})
	}
	if _, err := readFrame(bytes.NewReader([]byte("HSUP\x01\x00\x01\x00\x00\x00\x00\x10abc"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("readFrame(short payload) = %v; want %v", err, io.ErrUnexpectedEOF)
	}
}

// FuzzReadFrame feeds arbitrary bytes to the frame and hello decoders, as a
// hostile or broken peer could. They must not panic, and whatever decodes
// must encode back to the same message.
func FuzzReadFrame(f *testing.F) {
	for _, h := range []hello{
		{parentPID: 1},
		{parentPID: 100, names: []string{"tcp:127.0.0.1:8080", stderrName}, state: []byte("state")},
		{parentPID: 3, sections: map[string][]byte{ticketKeysSection: encodeTicketKeys([]ticketKey{{created: time.Unix(1, 0)}})}},
	} {
		p, _ := encodeHello(h)
		var buf bytes.Buffer
		writeFrame(&buf, protocolVersion, msgHello, p)
		f.Add(buf.Bytes())
	}
	var ready bytes.Buffer
	writeFrame(&ready, Version{2, 7}, msgReady, nil)
	f.Add(ready.Bytes())
	f.Add([]byte("HSUP\x01\x00\x01\x00\x00\x00\x00\x04\x00\x00\x00\x01"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := readFrame(bytes.NewReader(data))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := writeFrame(&buf, fr.version, fr.typ, fr.payload); err != nil {
			t.Fatalf("writeFrame(decoded frame) = %v", err)
		}
		want := slices.Clone(data[:frameHeaderSize])
		want[7] = 0 // reserved: written as zero, ignored when read
		if !bytes.Equal(buf.Bytes()[:frameHeaderSize], want) || !bytes.Equal(buf.Bytes()[frameHeaderSize:], fr.payload) {
			t.Fatalf("re-encoded frame %x differs from input %x", buf.Bytes(), data)
		}
		h, err := decodeHello(fr.payload)
		if err != nil {
			return
		}
		p, err := encodeHello(h)
		if err != nil {
			t.Fatalf("encodeHello(decoded %+v) = %v", h, err)
		}
		h2, err := decodeHello(p)
		if err != nil || !helloEqual(h2, h) {
			t.Fatalf("round trip: %+v, %v; want %+v", h2, err, h)
		}
		if keys, err := decodeTicketKeys(h.sections[ticketKeysSection]); err == nil {
			if again, err := decodeTicketKeys(encodeTicketKeys(keys)); err != nil || len(again) != len(keys) {
				t.Fatalf("ticket keys round trip: %v, %v; want %d keys", again, err, len(keys))
			}
		}
	})
}

func TestPIDFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.pid")
	tests := []struct {
		name   string
		do     func() error
		want   string
		exists bool
	}{
		{"write", func() error { return writePIDFile(path, 123) }, "123", true},
		{"replace", func() error { return writePIDFile(path, 456) }, "456", true},
		{"remove other pid", func() error { return removePIDFile(path, 123) }, "456", true},
		{"remove own pid", func() error { return removePIDFile(path, 456) }, "", false},
		{"remove missing", func() error { return removePIDFile(path, 456) }, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if tt.exists != (err == nil) {
				t.Fatalf("pidfile exists = %v; want %v", err == nil, tt.exists)
			}
			if got := strings.TrimSpace(string(b)); got != tt.want {
				t.Errorf("pidfile = %q; want %q", got, tt.want)
			}
		})
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("directory holds %d entries after removal (temporary files left?)", len(ents))
	}
	if err := writePIDFile(filepath.Join(dir, "missing", "x.pid"), 1); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("writePIDFile(missing dir) = %v; want an error naming the path", err)
	}
}
