// Package cli owns scanhook's command line: parsing arguments, running the
// subcommands and choosing exit codes (scripts rely on both). It receives the process
// environment explicitly (Env) so every command can be tested in-process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/scanhook/scanhook/internal/app"
)

// Exit codes shared by every subcommand. Scripts rely on them.
const (
	ExitOK      = 0
	ExitInvalid = 1 // invalid rules, alerts or config; a failed operation
	ExitUsage   = 2 // bad command line
)

// Env is what a command may touch of the outside world.
type Env struct {
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	Getenv  func(string) string
	Version string
	// ReadFile defaults to os.ReadFile.
	ReadFile func(string) ([]byte, error)
}

// app is the service's view of the environment.
func (e Env) app() app.Env {
	return app.Env{Stdout: e.Stdout, Stderr: e.Stderr, Getenv: e.Getenv, ReadFile: e.ReadFile}
}

func (e Env) readFile(name string) ([]byte, error) {
	if e.ReadFile != nil {
		return e.ReadFile(name)
	}
	return os.ReadFile(name)
}

func (e Env) getenv(k string) string {
	if e.Getenv != nil {
		return e.Getenv(k)
	}
	return ""
}

// usageError marks a bad command line: it is printed with the usage hint and
// exits with ExitUsage.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitError carries a specific exit code for an error already explained.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

const topUsage = `scanhook turns security alerts into Microsoft Defender antivirus scans.

Usage:
  scanhook serve [--config FILE] [--demo]
  scanhook rules check FILE...
  scanhook rules test --rules FILE --source SOURCE [--config FILE] ALERT.json...
  scanhook scan --config FILE --machine ID|DNSNAME --type Quick|Full --comment TEXT
  scanhook version

Run 'scanhook COMMAND --help' for a command's flags.
`

// Run runs one scanhook command line and returns its exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Stdout == nil {
		env.Stdout = io.Discard
	}
	if env.Stderr == nil {
		env.Stderr = io.Discard
	}
	err := runCommand(ctx, args, env)
	if err == nil {
		return ExitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.Stderr, "scanhook: %s\n\n%s", ue.msg, topUsage)
		return ExitUsage
	}
	var ee exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintf(env.Stderr, "scanhook: %s\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(env.Stderr, "scanhook: %s\n", err)
	return ExitInvalid
}

func runCommand(ctx context.Context, args []string, env Env) error {
	if len(args) == 0 {
		return usagef("no command given")
	}
	switch args[0] {
	case "version", "--version":
		fmt.Fprintf(env.Stdout, "scanhook %s\n", env.Version)
		return nil
	case "rules":
		if len(args) < 2 {
			return usagef("rules: want 'check' or 'test'")
		}
		switch args[1] {
		case "check":
			return rulesCheck(args[2:], env)
		case "test":
			return rulesTest(args[2:], env)
		default:
			return usagef("rules: unknown subcommand %q (want 'check' or 'test')", args[1])
		}
	case "serve":
		return serve(ctx, args[1:], env)
	case "scan":
		return scan(ctx, args[1:], env)
	case "help", "-h", "--help":
		fmt.Fprint(env.Stdout, topUsage)
		return nil
	default:
		return usagef("unknown command %q", args[0])
	}
}
