package devloop

import (
	"fmt"
	"syscall"
)

// becomeSubreaper makes this process adopt the orphans of its
// descendants, so that no process of a service outlives the loop unreaped
// or unkilled.
func becomeSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("become child subreaper: %w", errno)
	}
	return nil
}
