// Package timerslack owns the process's timer slack: how late Linux may
// wake a thread from a timed sleep, so as to batch wake-ups.
//
// Why scanhook raises it: under load the Go runtime's sysmon thread, which
// takes a P back from a goroutine blocked in a system call (scanhook's
// fsyncs), sleeps 20 µs at a time and wakes several thousand times a
// second. At the kernel's default slack of 50 µs that took 11-13% of a
// core at 2,000 alerts/s on the 2-core VM of the README (an eighth of
// scanhook's CPU), and every fsync longer than a few of those naps lost its
// P to another thread. With a 2 ms slack sysmon wakes at most about 500
// times a second, and scanhook's CPU at that rate fell by a quarter; the
// price is that a timer may fire up to 2 ms late, which nothing in scanhook
// minds (its shortest deadline is the 4 ms between group commits).
//
// A thread's slack is inherited by the threads it creates, and sysmon is
// created before main runs, so the only way to give it a slack is to set
// it on the calling thread and execute the program again: execve keeps the
// thread's slack, the PID, the arguments and the environment.
package timerslack
