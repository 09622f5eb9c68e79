package dropdir

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWatchReportsSettledArtifacts(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	found := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, dir, ".wasm", 100*time.Millisecond, func(p string) { found <- p }) }()
	time.Sleep(100 * time.Millisecond) // let the watch start

	// A payload written in pieces, then its manifest: reported once.
	p := filepath.Join(dir, "pricing-v2.wasm")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.Write([]byte("chunk"))
		time.Sleep(30 * time.Millisecond)
	}
	f.Close()
	os.WriteFile(p+".manifest", []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644)

	select {
	case got := <-found:
		if got != p {
			t.Fatalf("found %q; want %q", got, p)
		}
	case <-ctx.Done():
		t.Fatal("the artifact was never reported")
	}
	select {
	case got := <-found:
		t.Fatalf("reported again: %q", got)
	case <-time.After(400 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch() = %v", err)
	}
}

func TestWatchMissingDir(t *testing.T) {
	err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope"), ".wasm", 0, func(string) {})
	if err == nil {
		t.Fatal("Watch(missing dir) = nil; want an error")
	}
}
