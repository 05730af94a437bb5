package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/client"
)

// tokenEnv is the environment variable --token defaults to: a secret in
// the environment does not show in ps or in the shell history.
const tokenEnv = "NUDGE_TOKEN"

// securityFlags are the transport and credential flags of every command
// that calls nudged. They map onto the client package's options, so that
// nudgectl follows its rules: without --tls or --insecure a loopback
// address is dialled in plaintext and any other with TLS and the system
// roots; a token is sent only over TLS unless --insecure.
type securityFlags struct {
	fs         *flag.FlagSet
	token      *string
	useTLS     *bool
	caFile     *string
	certFile   *string
	keyFile    *string
	serverName *string
	insecure   *bool
}

func addSecurityFlags(fs *flag.FlagSet) *securityFlags {
	return &securityFlags{
		fs: fs,
		// The default is not read from the environment here: flag would
		// print it, the secret, in the usage text.
		token:      fs.String("token", "", "bearer token (default: $"+tokenEnv+"; prefer the variable, a command line is visible to other users)"),
		useTLS:     fs.Bool("tls", false, "connect with TLS (implied by --ca-file, --cert-file, --server-name; default: TLS except to a loopback address)"),
		caFile:     fs.String("ca-file", "", "PEM bundle of the CAs that verify nudged's certificate (default: the system roots)"),
		certFile:   fs.String("cert-file", "", "PEM client certificate, for a nudged that requires mutual TLS (with --key-file)"),
		keyFile:    fs.String("key-file", "", "PEM private key of --cert-file"),
		serverName: fs.String("server-name", "", "name to verify nudged's certificate against (default: the host of --addr)"),
		insecure:   fs.Bool("insecure", false, "connect in plaintext, and allow sending the token so (e.g. to a loopback nudged)"),
	}
}

// usageError is a flag combination that cannot work: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// bearerToken is --token, or $NUDGE_TOKEN when --token is not given (an
// explicit --token= sends none).
func (s *securityFlags) bearerToken() string {
	given := false
	s.fs.Visit(func(f *flag.Flag) { given = given || f.Name == "token" })
	if given {
		return *s.token
	}
	return os.Getenv(tokenEnv)
}

// wantsTLS reports whether a flag asks for TLS.
func (s *securityFlags) wantsTLS() bool {
	return *s.useTLS || *s.caFile != "" || *s.certFile != "" || *s.keyFile != "" || *s.serverName != ""
}

// options returns the client options the flags ask for. Errors are
// usageError for contradictory flags, plain errors for files that do not
// load.
func (s *securityFlags) options() ([]client.Option, error) {
	var opts []client.Option
	switch {
	case *s.insecure && s.wantsTLS():
		return nil, usageError{"--insecure (plaintext) contradicts --tls, --ca-file, --cert-file, --key-file and --server-name"}
	case (*s.certFile == "") != (*s.keyFile == ""):
		return nil, usageError{"--cert-file and --key-file go together"}
	case *s.insecure:
		opts = append(opts, client.WithInsecure())
	case s.wantsTLS():
		cfg, err := s.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, client.WithTLS(cfg))
	}
	if tok := s.bearerToken(); tok != "" {
		opts = append(opts, client.WithToken(tok))
	}
	return opts, nil
}

func (s *securityFlags) tlsConfig() (*tls.Config, error) {
	// ServerName empty: gRPC verifies the host of the target.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: *s.serverName}
	if *s.caFile != "" {
		pem, err := os.ReadFile(*s.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate found", *s.caFile)
		}
		cfg.RootCAs = pool
	}
	if *s.certFile != "" {
		cert, err := tls.LoadX509KeyPair(*s.certFile, *s.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file, --key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// dial connects to addr as the flags say. It does not wait for the
// connection: the first call does.
func (s *securityFlags) dial(addr string) (*client.Client, error) {
	opts, err := s.options()
	if err != nil {
		return nil, err
	}
	c, err := client.Dial(addr, opts...)
	if errors.Is(err, client.ErrTokenNeedsTLS) {
		return nil, usageError{fmt.Sprintf("refusing to send the token in plaintext to %s: give --tls or --ca-file to use TLS, or --insecure to send it in plaintext anyway (e.g. to a loopback nudged)", addr)}
	}
	return c, err
}

// dialFailed reports a dial error of command cmd and returns the exit
// status: 2 for flags that cannot work, 1 otherwise.
func dialFailed(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

// describeCallError is err as one line for people: a call's status code
// by name, its message, and for the codes a flag can fix, which flag.
func (s *securityFlags) describeCallError(err error) string {
	// The innermost status: its message without the wrapping's prefixes.
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) || se.GRPCStatus() == nil {
		return err.Error()
	}
	st := se.GRPCStatus()
	msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	switch st.Code() {
	case codes.Unauthenticated:
		if s.bearerToken() == "" {
			return msg + " (give a token with --token or $" + tokenEnv + ")"
		}
		return msg + " (check --token or $" + tokenEnv + ")"
	case codes.PermissionDenied:
		return msg + " (use a token with that role)"
	case codes.Unavailable:
		return msg + " (check --addr, and the transport: --tls or --ca-file for a nudged serving TLS, --cert-file and --key-file for one requiring client certificates)"
	}
	return msg
}
