// Command defender-sim runs the Microsoft Defender for Endpoint and Entra ID
// simulator (internal/defendersim) over TLS, for demos and manual testing of
// scanhook without a Defender tenant.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop() // os.Exit skips deferred calls
	os.Exit(code)
}
