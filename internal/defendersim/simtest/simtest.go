// Package simtest starts the Defender simulator for a test. It lives apart
// from defendersim so that the production binary, which embeds the
// simulator for the demo, does not link the testing package.
package simtest

import (
	"testing"

	"github.com/scanhook/scanhook/internal/defendersim"
)

// Start starts a simulator on a loopback port for a test and closes it
// when the test ends.
func Start(tb testing.TB, opts defendersim.Options) *defendersim.Server {
	tb.Helper()
	s, err := defendersim.New(opts)
	if err != nil {
		tb.Fatalf("defendersim: %v", err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		tb.Fatalf("defendersim: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
