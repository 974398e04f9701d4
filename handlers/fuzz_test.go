package handlers

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
)

// FuzzWebhook throws random sources, media types, credentials, headers and
// bodies at the webhook over a real listener and store. Whatever comes in,
// the answer is never a 5xx, and every error is a well-formed problem.
//
// auth picks the credential: 0 none, 1 the source's bearer token, 2 a valid
// signature over the body, 3 the query token, other: header as the
// Authorization value.
func FuzzWebhook(f *testing.F) {
	e := newEnv(f, withMaxBody(64<<10))
	for src, body := range samples(f) {
		f.Add(src, "application/json", uint8(1), "", body)
	}
	f.Add("sentinel", "application/json", uint8(2), "", samples(f)["sentinel"])
	f.Add("splunk", "application/json; charset=utf-8", uint8(3), "", samples(f)["splunk"])
	f.Add("defender", "text/plain", uint8(1), "", []byte(`{}`))
	f.Add("graph", "application/json", uint8(4), "Bearer x", []byte(`{"value":[{}]}`))
	f.Add("nosuch", "application/json", uint8(0), "", []byte(`{}`))

	f.Fuzz(func(t *testing.T, source, contentType string, auth uint8, header string, body []byte) {
		u := e.srv.URL + "/v1/webhooks/" + url.PathEscape(source)
		if auth == 3 {
			u += "?token=" + url.QueryEscape(queryToken)
		}
		req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			t.Skip()
		}
		req.Header.Set("Content-Type", contentType)
		switch auth {
		case 0, 3:
		case 1:
			req.Header.Set("Authorization", "Bearer "+bearerFor(source))
		case 2:
			req.Header.Set(SignatureHeader, sign(hmacSecret, e.clock.Now(), body))
		default:
			req.Header.Set("Authorization", header)
		}
		req.Header.Set("X-Request-Id", header)
		res, err := e.srv.Client().Do(req)
		if err != nil {
			// The client refused to send it (an invalid header value).
			t.Skip()
		}
		defer res.Body.Close()
		if res.StatusCode >= 500 {
			t.Fatalf("status %d for source %q type %q auth %d", res.StatusCode, source, contentType, auth)
		}
		if res.StatusCode == http.StatusAccepted {
			var got webhookResponse
			if err := json.NewDecoder(res.Body).Decode(&got); err != nil || !validReceiptID(got.Receipt) {
				t.Fatalf("202 body: %v %+v", err, got)
			}
			return
		}
		if res.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("status %d with Content-Type %q", res.StatusCode, res.Header.Get("Content-Type"))
		}
		var p problem
		if err := json.NewDecoder(res.Body).Decode(&p); err != nil || p.Status != res.StatusCode || p.Type == "" || p.RequestID == "" {
			t.Fatalf("problem %+v: %v", p, err)
		}
	})
}
