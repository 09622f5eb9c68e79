package upgrade_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hotswapgo/hotswap/upgrade"
)

func TestSecondUpgraderRefused(t *testing.T) {
	first, err := upgrade.New(upgrade.Options{NoSignals: true})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	second, err := upgrade.New(upgrade.Options{})
	var de *upgrade.DuplicateError
	if !errors.Is(err, upgrade.ErrDuplicate) || !errors.As(err, &de) {
		second.Close()
		t.Fatalf("second New() = %v; want a *DuplicateError", err)
	}
	if !strings.Contains(de.Owner, "TestSecondUpgraderRefused") {
		t.Errorf("DuplicateError.Owner = %q; want it to name the code that created the first", de.Owner)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	third, err := upgrade.New(upgrade.Options{NoSignals: true})
	if err != nil {
		t.Fatalf("New() after Close = %v; want a new Upgrader", err)
	}
	third.Close()
}
