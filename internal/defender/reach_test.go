package defender

import (
	"net"
	"net/http"
	"testing"

	"github.com/scanhook/scanhook/internal/defendersim"
	"github.com/scanhook/scanhook/internal/defendersim/simtest"
)

// TestTokenEndpointNotReachedIsNetwork checks that failing to reach Entra
// ID (a certificate the client does not trust, nothing listening) is a
// Network error, retried and reported as unavailable, not Unauthorized:
// no one refused the credential.
func TestTokenEndpointNotReachedIsNetwork(t *testing.T) {
	sim := simtest.Start(t, defendersim.Options{})

	t.Run("untrusted certificate", func(t *testing.T) {
		deps := simDeps(sim, nil, &syncBuffer{})
		tr := http.DefaultTransport.(*http.Transport).Clone() // the system roots: not the simulator's CA
		t.Cleanup(tr.CloseIdleConnections)
		deps.Transport = tr
		c, err := New(simConfig(sim), deps)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetMachine(ctxT(t), sim.Machines()[0].ID)
		e := wantKind(t, err, Network)
		if !IsRetryable(err) || !e.NotSent {
			t.Errorf("error = %v (retryable %v, not sent %v)", err, IsRetryable(err), e.NotSent)
		}
	})

	t.Run("nothing listening", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		cfg := simConfig(sim)
		cfg.AuthorityHost = "https://" + addr
		c, err := New(cfg, simDeps(sim, nil, &syncBuffer{}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.GetMachine(ctxT(t), sim.Machines()[0].ID)
		wantKind(t, err, Network)
	})
}
