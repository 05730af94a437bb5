package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/internal/certtest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// startDaemon runs Run with cfg (the embedded store) and returns its
// address; it stops when the test ends.
func startDaemon(t *testing.T, cfg Config) string {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, func(a net.Addr) { addrs <- a.String() }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case a := <-addrs:
		return a
	case err := <-done:
		done <- err // for the cleanup, which waits for Run to return
		t.Fatalf("Run: %v", err)
	}
	return ""
}

func healthCheck(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func clientTLS(ca *certtest.CA, cert tls.Certificate) credentials.TransportCredentials {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert.Certificate != nil {
		c.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(c)
}

func TestTLSListenerRefusesPlaintextAndRotatesCertificates(t *testing.T) {
	ca := certtest.NewCA(t, "server CA")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c, k, first := ca.Issue(t, "nudged", x509.ExtKeyUsageServerAuth)
	certtest.WriteFile(t, certFile, c)
	certtest.WriteFile(t, keyFile, k)
	addr := startDaemon(t, Config{TLS: TLSConfig{CertFile: certFile, KeyFile: keyFile}})

	if err := healthCheck(t, addr, insecure.NewCredentials()); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext client: err = %v, want Unavailable (no connection)", err)
	}
	if err := healthCheck(t, addr, clientTLS(ca, tls.Certificate{})); err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	servedSerial := func() int64 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.PEM)
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := servedSerial(); got != first {
		t.Fatalf("serves serial %d, want %d", got, first)
	}

	// Rotation: the next connection gets the new certificate.
	c2, k2, second := ca.Issue(t, "nudged", x509.ExtKeyUsageServerAuth)
	certtest.WriteFile(t, certFile, c2)
	certtest.WriteFile(t, keyFile, k2)
	if got := servedSerial(); got != second {
		t.Fatalf("after rotation serves serial %d, want %d", got, second)
	}
	// A broken file is refused; the last good certificate keeps serving.
	certtest.WriteFile(t, certFile, []byte("not a certificate"))
	if got := servedSerial(); got != second {
		t.Fatalf("after a broken write serves serial %d, want %d still", got, second)
	}
}

func TestMutualTLSRejectsClientsOfAnotherCA(t *testing.T) {
	serverCA, clientCA, otherCA := certtest.NewCA(t, "server CA"), certtest.NewCA(t, "client CA"), certtest.NewCA(t, "other CA")
	dir := t.TempDir()
	paths := map[string]string{}
	for name, b := range map[string][]byte{"client-ca.pem": clientCA.PEM} {
		paths[name] = filepath.Join(dir, name)
		certtest.WriteFile(t, paths[name], b)
	}
	c, k, _ := serverCA.Issue(t, "nudged", x509.ExtKeyUsageServerAuth)
	paths["cert"], paths["key"] = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certtest.WriteFile(t, paths["cert"], c)
	certtest.WriteFile(t, paths["key"], k)
	addr := startDaemon(t, Config{TLS: TLSConfig{CertFile: paths["cert"], KeyFile: paths["key"], ClientCAFile: paths["client-ca.pem"]}})

	clientCert := func(ca *certtest.CA) tls.Certificate {
		cp, kp, _ := ca.Issue(t, "storefront", x509.ExtKeyUsageClientAuth)
		cert, err := tls.X509KeyPair(cp, kp)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{
		{"client cert from the client CA", clientCert(clientCA), true},
		{"client cert from another CA", clientCert(otherCA), false},
		{"no client cert", tls.Certificate{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := healthCheck(t, addr, clientTLS(serverCA, tc.cert))
			if tc.ok && err != nil {
				t.Fatalf("err = %v, want success", err)
			}
			if !tc.ok && status.Code(err) != codes.Unavailable {
				t.Fatalf("err = %v, want Unavailable (handshake refused)", err)
			}
		})
	}
}

// The configured tokens reach the server: calls without the right token are
// refused; health stays open for load balancers.
func TestTokensFromConfigAreEnforced(t *testing.T) {
	addr := startDaemon(t, Config{Auth: AuthConfig{Tokens: []TokenConfig{
		{Name: "shop", Secret: "shop-secret-0123456789", Roles: []string{"decide"}},
	}}})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health without a token: %v", err)
	}
	req := &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}
	call := func(token string) error {
		ctx := t.Context()
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		}
		_, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(ctx, req)
		return err
	}
	for _, tc := range []struct {
		name, token string
		want        codes.Code
	}{
		{"no token", "", codes.Unauthenticated},
		{"wrong token", "nope-nope-nope", codes.Unauthenticated},
		{"right token", "shop-secret-0123456789", codes.OK},
	} {
		if got := status.Code(call(tc.token)); got != tc.want {
			t.Errorf("%s: code %v, want %v", tc.name, got, tc.want)
		}
	}
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer shop-secret-0123456789")
	_, err = nudgev1.NewProfileServiceClient(conn).GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("decide token on ProfileService: %v, want PermissionDenied", err)
	}
}
