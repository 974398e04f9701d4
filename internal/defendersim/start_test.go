package defendersim

import "testing"

// startTest starts a simulator on a loopback port for a test and closes it
// when the test ends (simtest.Start, which this package's tests cannot import).
func startTest(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatalf("defendersim: %v", err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		tb.Fatalf("defendersim: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
