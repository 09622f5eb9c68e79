package guard

import (
	"fmt"
)

// reader decodes a byte slice; the first error sticks and makes every later
// read return zero values.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) done() bool { return r.err != nil || r.off >= len(r.b) }

// left is the number of bytes not read yet.
func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *reader) failf(sentinel error, format string, args ...any) {
	r.fail(fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...)))
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.failf(ErrMalformed, "unexpected end")
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

// peek returns the next byte without consuming it, or 0 at the end.
func (r *reader) peek() byte {
	if r.err != nil || r.off >= len(r.b) {
		return 0
	}
	return r.b[r.off]
}

// bytes returns the next n bytes, a view of the input.
func (r *reader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.failf(ErrMalformed, "%d bytes declared, %d left", n, len(r.b)-r.off)
		return nil
	}
	b := r.b[r.off : r.off+n]
	r.off += n
	return b
}

// uleb reads an unsigned LEB128 of at most bits bits.
func (r *reader) uleb(bits uint) uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if shift+7 > bits && c>>(bits-shift) != 0 {
			// The last byte may only use the bits left and may not
			// continue.
			r.failf(ErrMalformed, "integer too large")
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
}

func (r *reader) u32() uint32 { return uint32(r.uleb(32)) }

// count reads a vector's length and checks it against the bytes left, each
// entry taking at least minSize bytes, and against limit (what names it).
// A count that fails either check is an error: decoders must never size
// anything from a count that was not checked here.
func (r *reader) count(minSize int, limit int, what string) int {
	n := r.u32()
	if r.err != nil {
		return 0
	}
	if uint64(n)*uint64(minSize) > uint64(r.left()) {
		r.failf(ErrMalformed, "%d %s declared but only %d bytes follow", n, what, r.left())
		return 0
	}
	if uint64(n) > uint64(limit) {
		r.fail(&LimitError{What: what, Declared: uint64(n), Limit: uint64(limit)})
		return 0
	}
	return int(n)
}

// sleb reads a signed LEB128 of at most bits bits.
func (r *reader) sleb(bits uint) int64 {
	var v int64
	var shift uint
	for {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if shift >= bits {
			r.failf(ErrMalformed, "integer too long")
			return 0
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v
		}
	}
}

func (r *reader) name() string {
	n := r.u32()
	return string(r.bytes(int(min(n, 1<<31-1))))
}
