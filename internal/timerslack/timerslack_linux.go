package timerslack

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
)

// From <linux/prctl.h>.
const (
	prSetTimerslack = 29
	prGetTimerslack = 30
)

// Supported reports whether the system has a timer slack to raise.
const Supported = true

// Current returns the calling thread's timer slack.
func Current() (time.Duration, error) {
	// The slack is per thread: keep the caller on the thread asked.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return current()
}

func current() (time.Duration, error) {
	r, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prGetTimerslack, 0, 0, 0, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("prctl(PR_GET_TIMERSLACK): %w", errno)
	}
	return time.Duration(r), nil
}

// Raise makes the program run with a timer slack of at least want. When
// the calling thread has that already (as after Raise executed the program
// again), it returns the thread's slack at once. Otherwise it sets the
// slack on the calling thread and executes the program again in place,
// and returns only when that failed, with the slack as it was: what the
// program did before calling Raise it does again, so call it first.
func Raise(want time.Duration) (time.Duration, error) {
	if want <= 0 {
		return 0, errors.New("timer slack: want a positive duration")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	had, err := current()
	if err != nil {
		return 0, err
	}
	if had >= want {
		return had, nil
	}
	if err := set(want); err != nil {
		return had, err
	}
	// /proc/self/exe is the running program even when its file has been
	// replaced or removed since it started (an upgrade in place).
	err = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	if rerr := set(had); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return had, fmt.Errorf("timer slack: execute the program again: %w", err)
}

func set(d time.Duration) error {
	if _, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetTimerslack, uintptr(d), 0, 0, 0, 0); errno != 0 {
		return fmt.Errorf("prctl(PR_SET_TIMERSLACK, %d): %w", d, errno)
	}
	return nil
}
