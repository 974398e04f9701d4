package main

import (
	"strings"
	"testing"
)

// The profiles show request bodies, so the profiler must never listen
// beyond loopback.
func TestStartProfilerOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr, wantErr string
	}{
		{"0.0.0.0:0", "loopback"},
		{":0", "loopback"},
		{"localhost:0", "loopback"}, // a name could resolve anywhere
		{"10.0.0.1:0", "loopback"},
		{"127.0.0.1", "PPROF_ADDR"},
		{"", "PPROF_ADDR"},
		{"127.0.0.1:0", ""},
		{"[::1]:0", ""},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := startProfiler(tc.addr)
			switch {
			case tc.wantErr == "" && err != nil:
				if strings.Contains(err.Error(), "cannot assign") || strings.Contains(err.Error(), "address family") {
					t.Skipf("no %s here: %v", tc.addr, err)
				}
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("err %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}
