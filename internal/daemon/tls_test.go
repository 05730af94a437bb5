package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
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

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// testCA is a certificate authority made up for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key signed by the CA, for a server
// on 127.0.0.1 or a client.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte, serialNo int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), serial
}

func writeBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	// Write then rename, as a certificate manager does, so a reader never
	// sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

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

func clientTLS(ca *testCA, cert tls.Certificate) credentials.TransportCredentials {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert.Certificate != nil {
		c.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(c)
}

func TestTLSListenerRefusesPlaintextAndRotatesCertificates(t *testing.T) {
	ca := newCA(t, "server CA")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	c, k, first := ca.issue(t, "nudged", x509.ExtKeyUsageServerAuth)
	writeBytes(t, certFile, c)
	writeBytes(t, keyFile, k)
	addr := startDaemon(t, Config{TLS: TLSConfig{CertFile: certFile, KeyFile: keyFile}})

	if err := healthCheck(t, addr, insecure.NewCredentials()); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext client: err = %v, want Unavailable (no connection)", err)
	}
	if err := healthCheck(t, addr, clientTLS(ca, tls.Certificate{})); err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	servedSerial := func() int64 {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.pem)
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
	c2, k2, second := ca.issue(t, "nudged", x509.ExtKeyUsageServerAuth)
	writeBytes(t, certFile, c2)
	writeBytes(t, keyFile, k2)
	if got := servedSerial(); got != second {
		t.Fatalf("after rotation serves serial %d, want %d", got, second)
	}
	// A broken file is refused; the last good certificate keeps serving.
	writeBytes(t, certFile, []byte("not a certificate"))
	if got := servedSerial(); got != second {
		t.Fatalf("after a broken write serves serial %d, want %d still", got, second)
	}
}

func TestMutualTLSRejectsClientsOfAnotherCA(t *testing.T) {
	serverCA, clientCA, otherCA := newCA(t, "server CA"), newCA(t, "client CA"), newCA(t, "other CA")
	dir := t.TempDir()
	paths := map[string]string{}
	for name, b := range map[string][]byte{"client-ca.pem": clientCA.pem} {
		paths[name] = filepath.Join(dir, name)
		writeBytes(t, paths[name], b)
	}
	c, k, _ := serverCA.issue(t, "nudged", x509.ExtKeyUsageServerAuth)
	paths["cert"], paths["key"] = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeBytes(t, paths["cert"], c)
	writeBytes(t, paths["key"], k)
	addr := startDaemon(t, Config{TLS: TLSConfig{CertFile: paths["cert"], KeyFile: paths["key"], ClientCAFile: paths["client-ca.pem"]}})

	clientCert := func(ca *testCA) tls.Certificate {
		cp, kp, _ := ca.issue(t, "storefront", x509.ExtKeyUsageClientAuth)
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
