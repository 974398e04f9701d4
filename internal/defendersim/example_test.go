package defendersim_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/scanhook/scanhook/internal/defendersim"
)

// Example shows the wiring a client test needs: the simulator's URL is both
// the Entra ID authority host and the API base URL, and its CA is trusted
// through CertPool (or SSL_CERT_FILE with WriteCAFile).
func Example() {
	sim, err := defendersim.New(defendersim.Options{GenerateMachines: 3})
	if err != nil {
		panic(err)
	}
	if err := sim.Start("127.0.0.1:0"); err != nil {
		panic(err)
	}
	defer sim.Close()

	transport := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: sim.CertPool()}}}
	cred, err := azidentity.NewClientSecretCredential(defendersim.DefaultTenantID, defendersim.DefaultClientID, defendersim.DefaultClientSecret,
		&azidentity.ClientSecretCredentialOptions{
			ClientOptions: azcore.ClientOptions{
				Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: sim.URL() + "/"},
				Transport: transport,
			},
			DisableInstanceDiscovery: true,
		})
	if err != nil {
		panic(err)
	}
	tok, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{defendersim.DefaultAudience + "/.default"}})
	if err != nil {
		panic(err)
	}
	m := sim.Machines()[0]
	req, _ := http.NewRequest(http.MethodPost, sim.URL()+"/api/machines/"+m.ID+"/runAntiVirusScan",
		strings.NewReader(`{"Comment":"example","ScanType":"Quick"}`))
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := transport.Do(req)
	if err != nil {
		panic(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, sim.Actions()[0].Status, sim.Actions()[0].Scope)
	// Output: 201 Pending Quick
}
