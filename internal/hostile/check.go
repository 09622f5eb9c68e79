package hostile

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hotswapgo/hotswap/module"
)

// Result is how a host answered a Case.
type Result struct {
	Load time.Duration // how long Load took
	Call time.Duration // how long the call took, when there was one
	Err  error         // the refusal or the call's error
}

// Check loads c into r as the module named c.Name, calls its handler when
// it loads, and returns an error unless the host answered as c.Want says.
// Each step must end within limit; Check returns after at most a few times
// limit even if the host hangs (leaving the step running).
func Check(ctx context.Context, r *module.Registry, c Case, limit time.Duration) (Result, error) {
	var res Result
	start := time.Now()
	err := bounded(limit, func() error {
		_, err := r.Load(ctx, c.Name, module.Source{Version: "v1", Artifact: c.Bytes})
		return err
	})
	res.Load, res.Err = time.Since(start), err
	if errors.Is(err, errHung) {
		return res, fmt.Errorf("Load did not return within %v", limit)
	}
	if c.Want.Check != "" {
		var le *module.LoadError
		if !errors.As(err, &le) || le.Check != c.Want.Check || !errors.Is(err, c.Want.Err) {
			return res, fmt.Errorf("Load() = %v; want a *module.LoadError of check %q matching %v", err, c.Want.Check, c.Want.Err)
		}
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("Load() = %v; want it to load", err)
	}
	m := r.Module(c.Name)
	call := func() error {
		start := time.Now()
		err := bounded(limit, func() error {
			cctx, cancel := context.WithTimeout(ctx, limit)
			defer cancel()
			_, err := m.Call(cctx, c.Want.Handler, []byte("x"))
			return err
		})
		res.Call, res.Err = time.Since(start), err
		return err
	}
	err = call()
	if errors.Is(err, errHung) {
		return res, fmt.Errorf("Call(%s) did not return within %v", c.Want.Handler, limit)
	}
	if c.Want.Err != nil {
		var ce *module.CallError
		if !errors.As(err, &ce) || !errors.Is(err, c.Want.Err) {
			return res, fmt.Errorf("Call(%s) = %v; want a *module.CallError matching %v", c.Want.Handler, err, c.Want.Err)
		}
		if st := m.Status(); st.Active == nil || st.Active.Discarded == 0 {
			return res, fmt.Errorf("after Call(%s) = %v: Status() = %+v; want the version serving, its instance discarded", c.Want.Handler, err, st)
		}
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("Call(%s) = %v; want success", c.Want.Handler, err)
	}
	if c.Want.DropsLogs {
		if st := m.Status().Active; st.DroppedLogLines == 0 {
			return res, fmt.Errorf("after a call logging 100,000 lines: %d dropped; want the rate limit to drop most", st.DroppedLogLines)
		}
	}
	if c.Want.DiscardsOnYield {
		deadline := time.Now().Add(3 * limit)
		for m.Status().Active.Discarded == 0 {
			if time.Now().After(deadline) {
				return res, fmt.Errorf("the runaway yield was not stopped within %v", 3*limit)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := call(); err != nil {
			return res, fmt.Errorf("Call(%s) after the yield was stopped = %v; want success", c.Want.Handler, err)
		}
	}
	return res, nil
}

var errHung = errors.New("hung")

// bounded runs f, giving up after limit.
func bounded(limit time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errHung
	}
}
