package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/scanhook/scanhook/handlers"
	"github.com/scanhook/scanhook/internal/config"
	"github.com/scanhook/scanhook/internal/entraauth"
)

// entraVerifiers builds one Entra ID token verifier per source with an
// auth.entra block, sharing one key cache (nil when no source has one).
// The authority is the Defender client's (defender.cloud or
// authority_host), so a government cloud's senders are checked against
// login.microsoftonline.us; issuers must be Entra ID's own forms unless
// the host is not one of Microsoft's (the simulator).
func entraVerifiers(ctx context.Context, cfg *config.Config, transport http.RoundTripper, logger *slog.Logger) (map[string]handlers.EntraVerifier, *entraauth.Provider, error) {
	out := map[string]handlers.EntraVerifier{}
	var prov *entraauth.Provider
	for _, name := range sortedKeys(cfg.Sources) {
		e := cfg.Sources[name].Auth.Entra
		if e == nil {
			continue
		}
		if prov == nil {
			var err error
			prov, err = entraauth.NewProvider(ctx, entraauth.ProviderOptions{
				Authority:     cfg.Defender.Effective().AuthorityHost,
				MicrosoftHost: !cfg.Defender.InstanceDiscoveryDisabled(),
				HTTPClient:    &http.Client{Transport: transport, Timeout: 10 * time.Second},
				Logger:        logger,
			})
			if err != nil {
				return nil, nil, err
			}
		}
		v, err := prov.Verifier(entraauth.Policy{TenantIDs: e.TenantIDs, Audiences: e.Audiences,
			AllowedClientIDs: e.AllowedClientIDs, AllowedObjectIDs: e.AllowedObjectIDs, RequiredRoles: e.RequiredRoles})
		if err != nil {
			return nil, nil, fmt.Errorf("sources.%s.auth.entra: %w", name, err)
		}
		out[name] = v
	}
	return out, prov, nil
}
