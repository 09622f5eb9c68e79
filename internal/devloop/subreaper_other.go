//go:build !linux

package devloop

import "errors"

// becomeSubreaper fails: only Linux lets a process adopt its descendants'
// orphans, which starting a service that upgrades itself needs.
func becomeSubreaper() error {
	return errors.New("starting the service is supported on Linux only; start it yourself and watch without a command")
}
