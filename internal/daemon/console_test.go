package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nudge-dm/nudge/internal/certtest"
)

// The console behind TLS and tokens: its in-process gRPC server has no
// TLS of its own, its calls carry the session's token, and its cookie is
// Secure. Signed out, a page sends the browser to sign in; signed in, the
// overview shows the rules in force, read through AdminService/GetRules.
func TestConsoleOverTLSWithTokens(t *testing.T) {
	ca := certtest.NewCA(t, "server CA")
	dir := t.TempDir()
	certFile, keyFile := ca.IssueFiles(t, dir, "nudged", x509.ExtKeyUsageServerAuth)
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte("tokens:\n- {name: ops, secret: console-daemon-test-secret, roles: [console]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := lis.Addr().String()
	_ = lis.Close()
	startDaemon(t, Config{
		TLS:  TLSConfig{CertFile: certFile, KeyFile: keyFile},
		Auth: AuthConfig{TokenFile: tokens},
		HTTP: HTTPConfig{Listen: httpAddr, Console: ConsoleConfig{Enabled: true}},
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{
		Jar:           jar,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	base := "https://" + httpAddr
	get := func(path string) (*http.Response, string) {
		t.Helper()
		res, err := c.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	if res, _ := get("/console/"); res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/console/login") {
		t.Fatalf("signed out: %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	_, page := get("/console/login")
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field:\n%s", page)
	}
	res, err := c.PostForm(base+"/console/login", url.Values{"csrf": {m[1]}, "token": {"console-daemon-test-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", res.StatusCode)
	}
	for _, ck := range res.Cookies() {
		if ck.Name == "nudge_console" && (!ck.Secure || !ck.HttpOnly) {
			t.Errorf("session cookie over TLS: %+v, want Secure and HttpOnly", ck)
		}
	}
	res, body := get("/console/")
	version := regexp.MustCompile(`id="rules-version">([0-9a-f]+)<`).FindStringSubmatch(body)
	if res.StatusCode != http.StatusOK || version == nil || !strings.Contains(body, ">ops<") {
		t.Fatalf("overview: %d\n%s", res.StatusCode, body)
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
}
