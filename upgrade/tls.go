package upgrade

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hotswapgo/hotswap/internal/logkey"
)

// Session ticket key rotation, as crypto/tls does with its own keys: a new
// key encrypts new tickets every TicketKeyRotation, and a key decrypts
// tickets for TicketKeyLifetime after it was created.
const (
	TicketKeyRotation = 24 * time.Hour
	TicketKeyLifetime = 7 * 24 * time.Hour
)

// ticketKeysSection names the hand-over section with the ticket keys.
const ticketKeysSection = reservedPrefix + "tls-ticket-keys"

// ShareSessionTickets makes cfg encrypt and decrypt TLS session tickets
// with keys this process hands to the process that replaces it (and that
// it received from the process it replaced), so that clients resume their
// TLS sessions after an upgrade instead of paying a full handshake. The
// keys rotate and expire as crypto/tls's own do (TicketKeyRotation,
// TicketKeyLifetime); they travel over the private hand-over socket only.
//
// It sets cfg.WrapSession and cfg.UnwrapSession, which must be unset, and
// the configs cloned from cfg afterwards (http.Server.ServeTLS clones its
// TLSConfig) share the keys. Call it before serving; several configs may
// share the keys.
func (u *Upgrader) ShareSessionTickets(cfg *tls.Config) error {
	switch {
	case cfg == nil:
		return errors.New("share session tickets: nil tls.Config")
	case cfg.SessionTicketsDisabled:
		return errors.New("share session tickets: the tls.Config disables session tickets")
	case cfg.WrapSession != nil || cfg.UnwrapSession != nil:
		return errors.New("share session tickets: the tls.Config already sets WrapSession or UnwrapSession")
	}
	u.tickets.add(cfg, time.Now())
	return nil
}

// ticketKeys are the session ticket keys of this process, shared by every
// tls.Config given to ShareSessionTickets.
type ticketKeys struct {
	log     *slog.Logger
	mu      sync.Mutex  // protects keys and configs
	keys    []ticketKey // newest first
	configs []*tls.Config
}

type ticketKey struct {
	key     [32]byte
	created time.Time
}

// newTicketKeys starts from the keys the parent handed over (a section
// that does not decode is logged and dropped: resumption then starts over).
func newTicketKeys(section []byte, log *slog.Logger) *ticketKeys {
	t := &ticketKeys{log: log}
	if section != nil {
		keys, err := decodeTicketKeys(section)
		if err != nil {
			log.Warn("upgrade: dropping the TLS session ticket keys handed over", logkey.Err, err)
		}
		t.keys = keys
	}
	return t
}

func (t *ticketKeys) add(cfg *tls.Config, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.configs = append(t.configs, cfg)
	// Through cfg, not the Config the handshake runs with: clones of cfg
	// made before a rotation would not know the new key.
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		t.rotate(time.Now())
		return cfg.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		return cfg.DecryptTicket(identity, cs)
	}
	t.rotateLocked(now, true)
}

// rotate adds a key when the newest is TicketKeyRotation old and drops
// those older than TicketKeyLifetime.
func (t *ticketKeys) rotate(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rotateLocked(now, false)
}

// rotateLocked is rotate with t.mu held; apply sets the keys on every
// config even if they did not change.
func (t *ticketKeys) rotateLocked(now time.Time, apply bool) {
	changed := false
	if len(t.keys) == 0 || now.Sub(t.keys[0].created) >= TicketKeyRotation || now.Before(t.keys[0].created) {
		var k ticketKey
		rand.Read(k.key[:]) // never fails (crypto/rand)
		k.created = now
		t.keys = append([]ticketKey{k}, t.keys...)
		changed = true
	}
	n := len(t.keys)
	t.keys = slices.DeleteFunc(t.keys, func(k ticketKey) bool { return now.Sub(k.created) >= TicketKeyLifetime })
	if len(t.keys) != n {
		changed = true
	}
	if !changed && !apply {
		return
	}
	keys := make([][32]byte, len(t.keys))
	for i, k := range t.keys {
		keys[i] = k.key
	}
	for _, cfg := range t.configs {
		cfg.SetSessionTicketKeys(keys)
	}
}

// snapshot encodes the keys for the next process, or returns nil if there
// are none.
func (t *ticketKeys) snapshot() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.keys) == 0 {
		return nil
	}
	return encodeTicketKeys(t.keys)
}

// maxTicketKeys bounds a decoded key list; rotation keeps about 8.
const maxTicketKeys = 64

// encodeTicketKeys lays out the section:
//
//	u8 format (1) | u16 n | n × (i64 created, unix ns | 32-byte key)
func encodeTicketKeys(keys []ticketKey) []byte {
	b := []byte{1}
	b = binary.BigEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		b = binary.BigEndian.AppendUint64(b, uint64(k.created.UnixNano()))
		b = append(b, k.key[:]...)
	}
	return b
}

// decodeTicketKeys parses a ticket key section from the parent.
func decodeTicketKeys(p []byte) ([]ticketKey, error) {
	d := decoder{b: p}
	format := d.bytes(1)
	n := int(d.u16())
	if d.err != nil {
		return nil, fmt.Errorf("%w: ticket keys: %v", ErrProtocol, d.err)
	}
	if format[0] != 1 {
		return nil, fmt.Errorf("%w: ticket keys: unknown format %d", ErrProtocol, format[0])
	}
	if n > maxTicketKeys {
		return nil, fmt.Errorf("%w: ticket keys: %d keys, limit %d", ErrProtocol, n, maxTicketKeys)
	}
	keys := make([]ticketKey, 0, n)
	for range n {
		created := d.bytes(8)
		key := d.bytes(32)
		if d.err != nil {
			return nil, fmt.Errorf("%w: ticket keys: %v", ErrProtocol, d.err)
		}
		k := ticketKey{created: time.Unix(0, int64(binary.BigEndian.Uint64(created)))}
		copy(k.key[:], key)
		keys = append(keys, k)
	}
	return keys, nil
}
