package upgrade

import (
	"crypto/tls"
	"log/slog"
	"testing"
	"time"
)

func TestTicketKeysRotate(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	k := newTicketKeys(nil, slog.New(slog.DiscardHandler))
	cfg := &tls.Config{}
	k.add(cfg, t0)
	first := k.keys[0].key
	// A ticket issued every hour for ten days.
	for now := t0; now.Before(t0.Add(10 * 24 * time.Hour)); now = now.Add(time.Hour) {
		k.rotate(now)
		age := now.Sub(t0)
		newest, oldest := k.keys[0], k.keys[len(k.keys)-1]
		if d := now.Sub(newest.created); d >= TicketKeyRotation {
			t.Fatalf("at +%v: newest key is %v old; want less than %v", age, d, TicketKeyRotation)
		}
		if d := now.Sub(oldest.created); d >= TicketKeyLifetime {
			t.Fatalf("at +%v: oldest key is %v old; want less than %v", age, d, TicketKeyLifetime)
		}
		want := min(int(age/TicketKeyRotation)+1, int(TicketKeyLifetime/TicketKeyRotation))
		if len(k.keys) != want {
			t.Fatalf("at +%v: %d keys; want %d", age, len(k.keys), want)
		}
		if stillFirst := oldest.key == first; stillFirst != (age < TicketKeyLifetime) {
			t.Fatalf("at +%v: first key kept = %v; want it kept for %v only", age, stillFirst, TicketKeyLifetime)
		}
	}
}

func TestTicketKeysHandedOver(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	parent := newTicketKeys(nil, log)
	parent.add(&tls.Config{}, time.Now())
	child := newTicketKeys(parent.snapshot(), log)
	if len(child.keys) != 1 || child.keys[0].key != parent.keys[0].key {
		t.Fatalf("child keys = %v; want the parent's %v", child.keys, parent.keys)
	}
	child.add(&tls.Config{}, time.Now())
	if len(child.keys) != 1 || child.keys[0].key != parent.keys[0].key {
		t.Errorf("child keys after ShareSessionTickets = %d; want the parent's key, not a new one", len(child.keys))
	}
	if got := newTicketKeys([]byte{9, 9}, log); len(got.keys) != 0 {
		t.Errorf("keys from a malformed section = %v; want none", got.keys)
	}
	if newTicketKeys(nil, log).snapshot() != nil {
		t.Errorf("snapshot with no keys is not nil: a process without TLS would hand over keys")
	}
}

func TestShareSessionTicketsRefusesHooks(t *testing.T) {
	u, err := New(Options{NoSignals: true})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for name, cfg := range map[string]*tls.Config{
		"nil":      nil,
		"disabled": {SessionTicketsDisabled: true},
		"wrap":     {WrapSession: func(tls.ConnectionState, *tls.SessionState) ([]byte, error) { return nil, nil }},
	} {
		if err := u.ShareSessionTickets(cfg); err == nil {
			t.Errorf("ShareSessionTickets(%s) = nil; want an error", name)
		}
	}
}
