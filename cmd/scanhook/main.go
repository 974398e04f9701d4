// Command scanhook turns security alerts into Microsoft Defender antivirus scans.
// main only wires the process's environment into internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/scanhook/scanhook/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := cli.Env{
		Stdin:   os.Stdin,
		Stdout:  os.Stdout,
		Stderr:  os.Stderr,
		Getenv:  os.Getenv,
		Version: version,
	}
	code := cli.Run(ctx, os.Args[1:], env)
	stop()
	os.Exit(code)
}
