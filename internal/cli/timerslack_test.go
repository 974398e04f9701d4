package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scanhook/scanhook/examples"
	"github.com/scanhook/scanhook/internal/defendersim"
)

// TestServeRaisesTimerSlack runs `serve --config` with a stand-in for
// internal/timerslack (the real one executes the program again, which a
// test binary must not do; that package tests it in a child process).
func TestServeRaisesTimerSlack(t *testing.T) {
	tests := []struct {
		name     string
		setting  string // server.timer_slack; "" leaves it out
		effect   time.Duration
		err      error
		wantCall time.Duration // 0: RaiseTimerSlack not called
		wantLog  map[string]string
	}{
		{name: "default", wantCall: 2 * time.Millisecond, effect: 2 * time.Millisecond,
			wantLog: map[string]string{"timer_slack": "2ms"}},
		{name: "configured", setting: "5ms", wantCall: 5 * time.Millisecond, effect: 5 * time.Millisecond,
			wantLog: map[string]string{"timer_slack": "5ms"}},
		{name: "zero keeps the system's", setting: "0"},
		{name: "a failure is logged and the service runs", setting: "3ms", wantCall: 3 * time.Millisecond,
			err:     errors.New("execve: permission denied"),
			wantLog: map[string]string{"msg": "timer slack not raised", "want": "3ms", "error": "execve: permission denied"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			server := ""
			if tc.setting != "" {
				server = "server:\n  timer_slack: " + tc.setting + "\n"
			}
			files := map[string]string{
				"secret":     defendersim.DefaultClientSecret,
				"token":      testToken,
				"rules.yaml": string(examples.Rules()),
				"config.yaml": fmt.Sprintf(`listen: 127.0.0.1:0
rules: rules.yaml
store: {driver: sqlite, dsn: scanhook.db}
defender:
  api_url: https://127.0.0.1:1
  authority_host: https://127.0.0.1:1/
  credential: client-secret
  tenant_id: %s
  client_id: %s
  client_secret_file: secret
sources:
  defender:
    auth: {bearer_token_file: token}
%s`, defendersim.DefaultTenantID, defendersim.DefaultClientID, server),
			}
			for name, content := range files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var calls []time.Duration
			logs := &syncWriter{}
			env := Env{Stderr: logs, RaiseTimerSlack: func(want time.Duration) (time.Duration, error) {
				calls = append(calls, want)
				return tc.effect, tc.err
			}}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan int, 1)
			go func() { done <- Run(ctx, []string{"serve", "--config", filepath.Join(dir, "config.yaml")}, env) }()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(logs.String(), `"msg":"scanhook serving"`) {
				select {
				case code := <-done:
					t.Fatalf("serve exited with %d:\n%s", code, logs.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("serve did not start:\n%s", logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			if code := <-done; code != ExitOK {
				t.Fatalf("serve exited with %d:\n%s", code, logs.String())
			}

			if tc.wantCall == 0 && len(calls) > 0 || tc.wantCall > 0 && (len(calls) != 1 || calls[0] != tc.wantCall) {
				t.Errorf("RaiseTimerSlack calls %v, want one with %v (none for 0)", calls, tc.wantCall)
			}
			// Every wanted field appears on one log line, prefixes for msg.
			found := tc.wantLog == nil
			for _, line := range strings.Split(logs.String(), "\n") {
				var rec map[string]any
				if json.Unmarshal([]byte(line), &rec) != nil {
					continue
				}
				if tc.wantLog == nil {
					if _, ok := rec["timer_slack"]; ok {
						t.Errorf("log line %s names a timer slack; none was raised", line)
					}
					continue
				}
				ok := true
				for k, v := range tc.wantLog {
					got, _ := rec[k].(string)
					if k == "msg" && !strings.HasPrefix(got, v) || k != "msg" && got != v {
						ok = false
					}
				}
				found = found || ok
			}
			if !found {
				t.Errorf("no log line with %v:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}
