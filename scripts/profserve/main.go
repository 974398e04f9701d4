// Command profserve is scanhook with Go's profiler on a second, loopback
// listener, for `PROFILE=1 scripts/load.sh` only: the service itself has no
// pprof endpoint, and a profile of the real process under the real load
// shows what a benchmark cannot (the HTTP server, the group commit and the
// dispatcher competing for two cores). It runs the same internal/cli code
// as cmd/scanhook.
//
//	PPROF_ADDR=127.0.0.1:6060 profserve serve --config FILE
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/scanhook/scanhook/internal/cli"
	"github.com/scanhook/scanhook/internal/timerslack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := startProfiler(os.Getenv("PPROF_ADDR")); err != nil {
		fmt.Fprintln(os.Stderr, "profserve:", err)
		os.Exit(1)
	}
	env := cli.Env{
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		Getenv: os.Getenv, Version: "profserve",
	}
	// As cmd/scanhook: serve executes the program again with its timer
	// slack (the profiler's listener closes with it and opens again).
	if timerslack.Supported {
		env.RaiseTimerSlack = timerslack.Raise
	}
	code := cli.Run(ctx, os.Args[1:], env)
	stop()
	os.Exit(code)
}

// startProfiler serves /debug/pprof/ on addr, which must be loopback: the
// profiles show request data.
func startProfiler(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("PPROF_ADDR %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("PPROF_ADDR %q: want a loopback address such as 127.0.0.1:6060", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("PPROF_ADDR: %w", err)
	}
	// Where requests wait (the single SQLite writer, fsync, locks) is what
	// a CPU profile misses; sample it coarsely to keep the cost small.
	runtime.SetBlockProfileRate(100_000) // one sample per 100 µs blocked
	runtime.SetMutexProfileFraction(20)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// The listener lives as long as the process, so Serve only returns on
	// an accept error worth reporting.
	go func() { fmt.Fprintln(os.Stderr, "profserve: pprof:", http.Serve(ln, mux)) }()
	return nil
}
