package control

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var l limiter
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range BadRequestBurst {
		if ok, held := l.allow(t0); !ok || held != 0 {
			t.Fatalf("allow() #%d of the burst = %v, %d held; want allowed, 0", i, ok, held)
		}
	}
	for i := range 5 {
		if ok, _ := l.allow(t0.Add(100 * time.Millisecond)); ok {
			t.Fatalf("allow() #%d past the burst = allowed; want held back", i)
		}
	}
	if ok, held := l.allow(t0.Add(1100 * time.Millisecond)); !ok || held != 5 {
		t.Fatalf("allow() a second later = %v, %d held; want allowed, 5 held before it", ok, held)
	}
	if ok, _ := l.allow(t0.Add(1200 * time.Millisecond)); ok {
		t.Fatal("allow() right after = allowed; want held back (one a second)")
	}
	if ok, held := l.allow(t0.Add(time.Hour)); !ok || held != 1 {
		t.Fatalf("allow() an hour later = %v, %d held; want allowed, 1 held", ok, held)
	}
}
