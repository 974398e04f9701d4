//go:build !linux

package timerslack

import (
	"errors"
	"time"
)

// Supported reports whether the system has a timer slack to raise.
const Supported = false

var errUnsupported = errors.New("timer slack: only Linux has one")

// Current reports that there is no timer slack here.
func Current() (time.Duration, error) { return 0, errUnsupported }

// Raise reports that there is no timer slack here.
func Raise(time.Duration) (time.Duration, error) { return 0, errUnsupported }
