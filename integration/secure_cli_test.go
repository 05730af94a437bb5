package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/internal/certtest"
	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// secureCLIPKI are the PEM files of a CA made up for a test and of a
// server (127.0.0.1) and a client certificate it signed.
type secureCLIPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// writeSecureCLIPKI makes the CA and the certificates and writes them to
// a temporary directory.
func writeSecureCLIPKI(t *testing.T) secureCLIPKI {
	t.Helper()
	dir := t.TempDir()
	ca := certtest.NewCA(t, "nudge test CA")
	p := secureCLIPKI{ca: filepath.Join(dir, "ca.pem")}
	certtest.WriteFile(t, p.ca, ca.PEM)
	p.serverCert, p.serverKey = ca.IssueFiles(t, dir, "nudged", x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = ca.IssueFiles(t, dir, "nudgectl", x509.ExtKeyUsageClientAuth)
	return p
}

// secureCLIResult is how a command line ended.
type secureCLIResult struct {
	status         int
	stdout, stderr string
}

// runSecureCLI runs bin with NUDGE_TOKEN set to token ("": unset).
func runSecureCLI(t *testing.T, token, bin string, args ...string) secureCLIResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NUDGE_TOKEN=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if token != "" {
		cmd.Env = append(cmd.Env, "NUDGE_TOKEN="+token)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := secureCLIResult{stdout: out.String(), stderr: errOut.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		res.status = exit.ExitCode()
	default:
		t.Fatalf("%s %s: %v", filepath.Base(bin), strings.Join(args, " "), err)
	}
	return res
}

// nudgectl and nudge-demo against a nudged with tokens and TLS, then with
// mutual TLS: the right token over TLS works, a missing token or a missing
// role is a one-line error and a non-zero exit, and a token is never sent
// in plaintext unless asked.
func TestSecureNudgectlAndDemo(t *testing.T) {
	nudgedBin, ctl, demo := buildNudged(t), buildCommand(t, "nudgectl"), buildCommand(t, "nudge-demo")
	rs := redistest.Start(t)
	pki := writeSecureCLIPKI(t)
	const operator, storefront = "operator-5ecret-0123", "storefront-5ecret-4567"
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(tokens, []byte("tokens:\n"+
		"- {name: operator, secret: "+operator+", roles: [admin, ingest, decide]}\n"+
		"- {name: storefront, secret: "+storefront+", roles: [decide]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr, "--auth-token-file", tokens,
		"--tls-cert-file", pki.serverCert, "--tls-key-file", pki.serverKey)

	// Three views in a row fire the coupon (see TestNudgectlAgainstNudged).
	events := filepath.Join(t.TempDir(), "events.jsonl")
	var lines []byte
	for _, e := range []*nudgev1.Event{
		inDaytime(ev("secure-user", "view", "phones", 3*time.Minute)),
		ev("secure-user", "view", "phones", 2*time.Minute),
		ev("secure-user", "view", "phones", time.Minute),
	} {
		b, err := protojson.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(append(lines, b...), '\n')
	}
	if err := os.WriteFile(events, lines, 0o644); err != nil {
		t.Fatal(err)
	}

	addr, ca := []string{"--addr", n.addr}, []string{"--ca-file", pki.ca}
	args := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name       string
		token      string // NUDGE_TOKEN
		bin        string
		args       []string
		wantStatus int
		wantOut    []string // in stdout
		wantErr    []string // in stderr
	}{
		{name: "send with the operator token over TLS", token: operator, bin: ctl,
			args:    args([]string{"send", events, "--quiet"}, addr, ca),
			wantOut: []string{"3 events sent: 3 applied"}},
		{name: "decide with the storefront token from NUDGE_TOKEN", token: storefront, bin: ctl,
			args:    args([]string{"decide", "secure-user", "--channel", "sms", "--json", "--budget", "1s"}, addr, ca),
			wantOut: []string{`"verdict":"VERDICT_SEND"`, `"id":"phones-coupon"`}},
		{name: "decide with --token", bin: ctl,
			args:    args([]string{"decide", "secure-user", "--channel", "web", "--json", "--token", storefront}, addr, ca),
			wantOut: []string{`"verdict":"VERDICT_SEND"`}},
		{name: "decide without a token", bin: ctl,
			args:       args([]string{"decide", "secure-user", "--channel", "web"}, addr, ca),
			wantStatus: 1, wantErr: []string{"nudgectl decide: Unauthenticated: missing bearer token", "--token or $NUDGE_TOKEN"}},
		{name: "decide with an unknown token", token: "not-a-token-at-all", bin: ctl,
			args:       args([]string{"decide", "secure-user", "--channel", "web"}, addr, ca),
			wantStatus: 1, wantErr: []string{"nudgectl decide: Unauthenticated: unknown token"}},
		{name: "profile get with the decide token", token: storefront, bin: ctl,
			args:       args([]string{"profile", "get", "secure-user"}, addr, ca),
			wantStatus: 1, wantErr: []string{`nudgectl profile get: PermissionDenied: token "storefront" lacks role "admin"`}},
		{name: "profile get with the admin token", token: operator, bin: ctl,
			args:    args([]string{"profile", "get", "secure-user", "--json"}, addr, ca),
			wantOut: []string{`"view":"3"`}},
		{name: "send with the decide token", token: storefront, bin: ctl,
			args:       args([]string{"send", events, "--quiet"}, addr, ca),
			wantStatus: 1, wantErr: []string{`nudgectl send: PermissionDenied: token "storefront" lacks role "ingest"`}},
		{name: "actions tail with the decide token", token: storefront, bin: ctl,
			args:       args([]string{"actions", "tail", "--group", "secure", "-n", "1"}, addr, ca),
			wantStatus: 1, wantErr: []string{`nudgectl actions tail: PermissionDenied: token "storefront" lacks role "subscribe"`}},
		{name: "groups list with the admin token", token: operator, bin: ctl,
			args:    args([]string{"groups", "list"}, addr, ca),
			wantOut: []string{"no consumer groups"}},
		{name: "groups delete with the decide token", token: storefront, bin: ctl,
			args:       args([]string{"groups", "delete", "secure"}, addr, ca),
			wantStatus: 1, wantErr: []string{`nudgectl groups delete: PermissionDenied: token "storefront" lacks role "admin"`}},
		{name: "a token in plaintext is refused before dialling", token: storefront, bin: ctl,
			args:       args([]string{"decide", "secure-user", "--channel", "web"}, addr),
			wantStatus: 2, wantErr: []string{"refusing to send the token in plaintext to " + n.addr, "--insecure"}},
		{name: "--insecure to a TLS nudged", token: storefront, bin: ctl,
			args:       args([]string{"decide", "secure-user", "--channel", "web", "--insecure"}, addr),
			wantStatus: 1, wantErr: []string{"nudgectl decide: Unavailable:", "--tls or --ca-file"}},
		{name: "TLS with the system roots does not verify a private CA", token: storefront, bin: ctl,
			args:       args([]string{"decide", "secure-user", "--channel", "web", "--tls"}, addr),
			wantStatus: 1, wantErr: []string{"nudgectl decide: Unavailable:"}},
		{name: "a server name the certificate does not have", token: storefront, bin: ctl,
			args:       args([]string{"decide", "secure-user", "--channel", "web", "--server-name", "nudge.invalid"}, addr, ca),
			wantStatus: 1, wantErr: []string{"nudgectl decide: Unavailable:"}},
		{name: "nudge-demo with the operator token over TLS", token: operator, bin: demo,
			args:    args([]string{"--user", "secure-demo"}, addr, ca),
			wantOut: []string{"TRIGGERED", "== A storefront asks for a decision", "== The profile (GetProfile)"}},
		{name: "nudge-demo without a token", bin: demo,
			args:       args([]string{"--user", "secure-demo-2"}, addr, ca),
			wantStatus: 1, wantErr: []string{"Unauthenticated"}},
		{name: "nudge-demo refuses a token in plaintext", token: operator, bin: demo,
			args:       args([]string{"--user", "secure-demo-3"}, addr),
			wantStatus: 2, wantErr: []string{"refusing to send the token in plaintext"}}, // a usage error, as in nudgectl
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runSecureCLI(t, tt.token, tt.bin, tt.args...)
			checkSecureCLI(t, r, tt.wantStatus, tt.wantOut, tt.wantErr)
			for _, secret := range []string{operator, storefront} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("output shows a token's secret:\n%s%s", r.stdout, r.stderr)
				}
			}
		})
	}

	t.Run("mutual TLS", func(t *testing.T) {
		m := startNudged(t, nudgedBin, "--redis-addr", rs.Addr, "--auth-token-file", tokens,
			"--tls-cert-file", pki.serverCert, "--tls-key-file", pki.serverKey, "--tls-client-ca-file", pki.ca)
		base := []string{"decide", "secure-user", "--channel", "web", "--addr", m.addr, "--ca-file", pki.ca}
		r := runSecureCLI(t, storefront, ctl, append(base, "--cert-file", pki.clientCert, "--key-file", pki.clientKey)...)
		checkSecureCLI(t, r, 0, []string{"VERDICT_SEND"}, nil)
		r = runSecureCLI(t, storefront, ctl, base...)
		checkSecureCLI(t, r, 1, nil, []string{"nudgectl decide: Unavailable:", "--cert-file and --key-file"})
	})
}

func checkSecureCLI(t *testing.T, r secureCLIResult, wantStatus int, wantOut, wantErr []string) {
	t.Helper()
	if r.status != wantStatus {
		t.Errorf("exit status %d, want %d; stdout:\n%s\nstderr:\n%s", r.status, wantStatus, r.stdout, r.stderr)
	}
	for _, w := range wantOut {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
		}
	}
	for _, w := range wantErr {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
		}
	}
	// A refusal is one line, not a stack of them.
	if wantStatus != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
		t.Errorf("stderr has several lines, want one:\n%s", r.stderr)
	}
}
