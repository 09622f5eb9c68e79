package upgrade

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPhaseDuringUpgrade watches Phase through a real upgrade: the parent
// moves through starting, waiting for ready and probation to handed over;
// the new process reports parent probation until the commit, then idle.
func TestPhaseDuringUpgrade(t *testing.T) {
	prepared := make(chan struct{})
	seenStarting := make(chan struct{})
	p := startParent(t, "slow-ready", Options{NoSignals: true, Probation: time.Second,
		PrepareBinary: func(ctx context.Context, path string) (string, error) {
			close(prepared)
			select { // hold the attempt in PhaseStarting until it was seen
			case <-seenStarting:
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(10 * time.Second):
			}
			return path, nil
		}})
	if phase, pid := p.u.Phase(); phase != PhaseIdle || pid != 0 {
		t.Fatalf("Phase() before an upgrade = %v, %d; want idle, 0", phase, pid)
	}

	type upgraded struct {
		res Result
		err error
	}
	done := make(chan upgraded, 1)
	go func() {
		res, err := p.u.Upgrade(context.Background())
		done <- upgraded{res, err}
	}()
	select {
	case <-prepared:
	case <-time.After(10 * time.Second):
		t.Fatal("PrepareBinary not called within 10s")
	}

	// Sample the phase until the upgrade is decided; record each change.
	var phases []Phase
	var childPID int
	var childSaw string // what the new process says of itself in probation
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	var out upgraded
sample:
	for {
		phase, pid := p.u.Phase()
		if len(phases) == 0 || phases[len(phases)-1] != phase {
			phases = append(phases, phase)
			switch phase {
			case PhaseStarting:
				close(seenStarting)
			case PhaseWaitReady, PhaseProbation:
				if pid == 0 {
					t.Errorf("Phase() = %v with pid 0; want the new process's pid", phase)
				}
				childPID = pid
			}
			if phase == PhaseProbation {
				// The parent stopped accepting: the new process answers.
				c := &strictClient{network: "tcp", addr: p.addr}
				if s, err := c.get("/phase"); err == nil {
					childSaw = s
				} else {
					t.Errorf("GET /phase during probation = %v", err)
				}
			}
		}
		select {
		case out = <-done:
			phase, _ := p.u.Phase()
			if phases[len(phases)-1] != phase {
				phases = append(phases, phase)
			}
			break sample
		case <-deadline:
			t.Fatalf("upgrade not decided within 30s; phases so far %v", phases)
		case <-tick.C:
		}
	}
	if out.err != nil {
		t.Fatalf("Upgrade() = %v", out.err)
	}
	defer stopChild(t, out.res.PID)
	want := []Phase{PhaseStarting, PhaseWaitReady, PhaseProbation, PhaseHandedOver}
	if !slices.Equal(phases, want) {
		t.Errorf("phases seen = %v; want %v", phases, want)
	}
	if childPID != out.res.PID {
		t.Errorf("Phase() pid = %d; want the new process %d", childPID, out.res.PID)
	}
	if childSaw != PhaseParentProbation.String() {
		t.Errorf("the new process's Phase() during probation = %q; want %q", childSaw, PhaseParentProbation)
	}
	// Committed, the new process serves alone.
	c := &strictClient{network: "tcp", addr: p.addr}
	if s, err := c.get("/phase"); err != nil || s != PhaseIdle.String() {
		t.Errorf("the new process's Phase() after the commit = %q, %v; want %q", s, err, PhaseIdle)
	}
}

func TestPhaseString(t *testing.T) {
	for _, p := range Phases() {
		if s := p.String(); s == "" || strings.HasPrefix(s, "phase(") {
			t.Errorf("Phase(%d).String() = %q; want a name", p, s)
		}
	}
	if got := Phase(200).String(); got != "phase(200)" {
		t.Errorf("Phase(200).String() = %q; want phase(200)", got)
	}
}
