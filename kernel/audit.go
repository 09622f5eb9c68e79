package kernel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/hotswapgo/hotswap/artifact"
	"github.com/hotswapgo/hotswap/audit"
	"github.com/hotswapgo/hotswap/internal/logkey"
)

type actorKey struct{}

// WithActor returns a context naming who asked for the changes made with
// it, for the audit log (audit.PeerActor(uid, pid), "cli", …).
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// change is one audited load or rollback: its records share an ID, and are
// written with a context that outlives the request, so a change whose
// caller gave up is still recorded.
type change struct {
	s   *Slot
	ctx context.Context
	ev  audit.Event
}

// begin takes the slot for one change and records that it starts. A slot
// busy with another change or closed refuses, audited; so does a change
// whose start cannot be recorded. On success the caller holds s.swap.
func (s *Slot) begin(ctx context.Context, action audit.Action, label string) (*change, error) {
	c := s.newChange(ctx, action, label)
	if !s.swap.TryLock() {
		return nil, c.refuse(fmt.Errorf("%s %s: %w", action, s.opts.Name, ErrBusy))
	}
	if s.closed {
		s.swap.Unlock()
		return nil, c.refuse(fmt.Errorf("%s %s: %w", action, s.opts.Name, ErrClosed))
	}
	if s.cur != nil {
		c.ev.From = versionRef(s.cur.manifest)
	}
	if err := c.record(audit.ResultStarted, nil); err != nil {
		s.swap.Unlock()
		return nil, fmt.Errorf("%s %s refused: audit log: %w", action, s.opts.Name, err)
	}
	return c, nil
}

func (s *Slot) newChange(ctx context.Context, action audit.Action, label string) *change {
	var id [8]byte
	rand.Read(id[:])
	actor, _ := ctx.Value(actorKey{}).(string)
	return &change{s: s, ctx: context.WithoutCancel(ctx), ev: audit.Event{
		ID: hex.EncodeToString(id[:]), Actor: actor, Action: action, Target: s.opts.Name, Artifact: label,
	}}
}

// refuse records that a check refused the change (or that its caller gave
// up) and returns err.
func (c *change) refuse(err error) error {
	result := audit.ResultRefused
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		result = audit.ResultCanceled
	}
	c.record(result, err)
	c.s.log.Warn("eBPF change "+string(result), "action", c.ev.Action, logkey.Slot, c.ev.Target, "to", c.ev.To, logkey.Err, err)
	return err
}

// allow records that the change passed every check and takes effect now;
// if that cannot be recorded the change is refused.
func (c *change) allow() error {
	if err := c.record(audit.ResultOK, nil); err != nil {
		return fmt.Errorf("%s %s refused: audit log: %w", c.ev.Action, c.ev.Target, err)
	}
	return nil
}

// fail records that the change, allowed, failed to take effect.
func (c *change) fail(err error) error {
	c.record(audit.ResultFailed, err)
	c.s.log.Warn("eBPF change failed", "action", c.ev.Action, logkey.Slot, c.ev.Target, "to", c.ev.To, logkey.Err, err)
	return err
}

func (c *change) record(result audit.Result, err error) error {
	ev := c.ev
	ev.Result = result
	if err != nil {
		ev.Error = err.Error()
	}
	if aerr := c.s.opts.Audit.Record(c.ctx, ev); aerr != nil {
		c.s.log.Error("audit an eBPF change", logkey.Slot, ev.Target, "result", result, logkey.Err, aerr)
		return aerr
	}
	return nil
}

func versionRef(m artifact.Manifest) string { return m.Version + "@" + m.Digest.String() }
