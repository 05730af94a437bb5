package daemon

import (
	"io"
	"strings"
	"testing"
	"time"
)

// The webhooks section: read from the file with secret_file resolved,
// every field validated with an error naming it, secrets redacted.
func TestLoadWebhooks(t *testing.T) {
	secretFile := writeFile(t, "sms.secret", "from-the-file\n")
	file := writeFile(t, "nudged.yaml", `
webhooks:
- name: sms-gateway
  url: https://sms.example.com/nudge
  channels: [sms]
  secret_file: `+secretFile+`
  timeout: 5s
  max_in_flight: 4
  backoff_min: 1s
  backoff_max: 20s
  max_age: 1h
- name: crm
  url: http://user:hunter2@127.0.0.1:9000/hook
  secret: inline-secret
`)
	got, err := Load([]string{"--config", file}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ws := got.Config.Webhooks
	if len(ws) != 2 {
		t.Fatalf("%d webhooks, want 2", len(ws))
	}
	w := ws[0]
	if w.Secret != "from-the-file" || w.SecretFile != "" || w.Timeout != 5*time.Second || w.MaxInFlight != 4 ||
		w.BackoffMin != time.Second || w.BackoffMax != 20*time.Second || w.MaxAge != time.Hour || len(w.Channels) != 1 {
		t.Errorf("webhook 0 = %+v", w)
	}
	out, err := got.Config.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"from-the-file", "inline-secret", "hunter2"} {
		if strings.Contains(string(out), secret) {
			t.Errorf("--print-config shows %q:\n%s", secret, out)
		}
	}
	if got.Config.Webhooks[1].Secret != "inline-secret" {
		t.Errorf("Redacted changed the configuration itself")
	}
}

func TestValidateWebhooks(t *testing.T) {
	missing := t.TempDir() + "/none"
	for _, tc := range []struct {
		name string
		yaml string
		want string
	}{
		{name: "no name", yaml: "- {url: 'https://x.example/h', secret: s}", want: "webhooks[0].name: \"\" is not a safe name"},
		{name: "unsafe name", yaml: "- {name: 'a b', url: 'https://x.example/h', secret: s}", want: "webhooks[0] (a b).name:"},
		{name: "duplicate name", yaml: "- {name: a, url: 'https://x.example/h', secret: s}\n- {name: a, url: 'https://y.example/h', secret: t}",
			want: "webhooks[1] (a).name: webhooks[0] has the name \"a\" already"},
		{name: "no url", yaml: "- {name: a, secret: s}", want: "webhooks[0] (a).url: required"},
		{name: "relative url", yaml: "- {name: a, url: /hook, secret: s}", want: "webhooks[0] (a).url: \"/hook\" is not an absolute http:// or https:// URL"},
		{name: "bad channel", yaml: "- {name: a, url: 'https://x.example/h', secret: s, channels: [SMS]}", want: "webhooks[0] (a).channels: \"SMS\" is not a channel name"},
		{name: "no secret", yaml: "- {name: a, url: 'https://x.example/h'}", want: "webhooks[0] (a).secret: required: every request is signed with it (X-Nudge-Signature); set secret or secret_file"},
		{name: "both secrets", yaml: "- {name: a, url: 'https://x.example/h', secret: s, secret_file: /dev/null}", want: "webhooks[0] (a): secret and secret_file exclude each other"},
		{name: "missing secret file", yaml: "- {name: a, url: 'https://x.example/h', secret_file: '" + missing + "'}", want: "webhooks[0] (a).secret_file: open"},
		{name: "negative timeout", yaml: "- {name: a, url: 'https://x.example/h', secret: s, timeout: -1s}", want: "webhooks[0] (a).timeout: -1s; want a duration above 0"},
		{name: "timeout past the visibility", yaml: "- {name: a, url: 'https://x.example/h', secret: s, timeout: 30s}",
			want: "webhooks[0] (a).timeout: 30s is not shorter than delivery.visibility_timeout 30s"},
		{name: "default timeout past a short visibility", yaml: "- {name: a, url: 'https://x.example/h', secret: s}\ndelivery: {visibility_timeout: 5s}",
			want: "webhooks[0] (a).timeout: 10s is not shorter than delivery.visibility_timeout 5s"},
		{name: "negative max_in_flight", yaml: "- {name: a, url: 'https://x.example/h', secret: s, max_in_flight: -2}", want: "webhooks[0] (a).max_in_flight: -2; want 1 or more"},
		{name: "backoff inverted", yaml: "- {name: a, url: 'https://x.example/h', secret: s, backoff_min: 2s, backoff_max: 1s}", want: "webhooks[0] (a).backoff_min: 2s is above backoff_max 1s"},
		{name: "negative max_age", yaml: "- {name: a, url: 'https://x.example/h', secret: s, max_age: -1h}", want: "webhooks[0] (a).max_age:"},
		{name: "unknown key", yaml: "- {name: a, url: 'https://x.example/h', secret: s, retries: 3}", want: "field retries not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, "nudged.yaml", "webhooks:\n"+tc.yaml+"\n")
			_, err := Load([]string{"--config", file}, env(nil), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
