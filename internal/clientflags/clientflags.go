// Package clientflags holds the transport and credential flags of nudge's
// command-line clients (nudgectl, nudge-demo, nudge-bench), mapped onto the
// client package's options so that every command follows its rules:
// without --tls or --insecure a loopback address is dialled in plaintext
// and any other with TLS and the system roots; a token is sent only over
// TLS unless --insecure. Register binds them to a flag.FlagSet,
// RegisterPFlags to a pflag one (cobra's, in nudgectl).
package clientflags

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/client"
)

// TokenEnv is the environment variable --token defaults to: a secret in
// the environment does not show in ps or in the shell history.
const TokenEnv = "NUDGE_TOKEN"

// UsageError is a flag combination that cannot work (commands exit 2).
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Flags are the security flags of one flag set.
type Flags struct {
	given      func(name string) bool // whether the command line set the flag
	getenv     func(string) string
	token      *string
	useTLS     *bool
	caFile     *string
	certFile   *string
	keyFile    *string
	serverName *string
	insecure   *bool
}

// flagDefiner is what flag.FlagSet and pflag.FlagSet have in common.
type flagDefiner interface {
	String(name, value, usage string) *string
	Bool(name string, value bool, usage string) *bool
}

// Register adds --token, --tls, --ca-file, --cert-file, --key-file,
// --server-name and --insecure to fs. roles says which roles the command's
// token needs, for the usage text; getenv reads TokenEnv (os.Getenv).
func Register(fs *flag.FlagSet, roles string, getenv func(string) string) *Flags {
	f := define(fs, roles, getenv)
	f.given = func(name string) bool {
		given := false
		fs.Visit(func(fl *flag.Flag) { given = given || fl.Name == name })
		return given
	}
	return f
}

// RegisterPFlags is Register for a pflag.FlagSet (cobra's flags).
func RegisterPFlags(fs *pflag.FlagSet, roles string, getenv func(string) string) *Flags {
	f := define(fs, roles, getenv)
	f.given = fs.Changed
	return f
}

func define(fs flagDefiner, roles string, getenv func(string) string) *Flags {
	return &Flags{
		getenv: getenv,
		// The default is not read from the environment here: flag would
		// print it, the secret, in the usage text.
		token:      fs.String("token", "", "bearer token with the "+roles+" roles (default: $"+TokenEnv+"; prefer the variable, a command line is visible to other users)"),
		useTLS:     fs.Bool("tls", false, "connect with TLS (implied by --ca-file, --cert-file, --server-name; default: TLS except to a loopback address)"),
		caFile:     fs.String("ca-file", "", "PEM bundle of the CAs that verify nudged's certificate (default: the system roots)"),
		certFile:   fs.String("cert-file", "", "PEM client certificate, for a nudged that requires mutual TLS (with --key-file)"),
		keyFile:    fs.String("key-file", "", "PEM private key of --cert-file"),
		serverName: fs.String("server-name", "", "name to verify nudged's certificate against (default: the host of --addr)"),
		insecure:   fs.Bool("insecure", false, "connect in plaintext, and allow sending the token so (e.g. to a loopback nudged)"),
	}
}

// Token is --token, or $NUDGE_TOKEN when --token is not given (an explicit
// --token= sends none).
func (f *Flags) Token() string {
	if f.given("token") {
		return *f.token
	}
	return f.getenv(TokenEnv)
}

func (f *Flags) wantsTLS() bool {
	return *f.useTLS || *f.caFile != "" || *f.certFile != "" || *f.keyFile != "" || *f.serverName != ""
}

// Options returns the client options the flags ask for. Errors are
// UsageError for contradictory flags, plain errors for files that do not
// load.
func (f *Flags) Options() ([]client.Option, error) {
	var opts []client.Option
	switch {
	case *f.insecure && f.wantsTLS():
		return nil, UsageError{"--insecure (plaintext) contradicts --tls, --ca-file, --cert-file, --key-file and --server-name"}
	case (*f.certFile == "") != (*f.keyFile == ""):
		return nil, UsageError{"--cert-file and --key-file go together"}
	case *f.insecure:
		opts = append(opts, client.WithInsecure())
	case f.wantsTLS():
		cfg, err := f.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, client.WithTLS(cfg))
	}
	if tok := f.Token(); tok != "" {
		opts = append(opts, client.WithToken(tok))
	}
	return opts, nil
}

func (f *Flags) tlsConfig() (*tls.Config, error) {
	// ServerName empty: gRPC verifies the host of the target.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: *f.serverName}
	if *f.caFile != "" {
		pem, err := os.ReadFile(*f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate found", *f.caFile)
		}
		cfg.RootCAs = pool
	}
	if *f.certFile != "" {
		cert, err := tls.LoadX509KeyPair(*f.certFile, *f.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file, --key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Dial connects to addr as the flags say. It does not wait for the
// connection: the first call does.
func (f *Flags) Dial(addr string) (*client.Client, error) {
	opts, err := f.Options()
	if err != nil {
		return nil, err
	}
	c, err := client.Dial(addr, opts...)
	if errors.Is(err, client.ErrTokenNeedsTLS) {
		return nil, UsageError{fmt.Sprintf("refusing to send the token in plaintext to %s: give --tls or --ca-file to use TLS, or --insecure to send it in plaintext anyway (e.g. to a loopback nudged)", addr)}
	}
	return c, err
}

// Describe is a call's error as one line for people: its status code by
// name, its message, and for the codes a flag can fix, which flag.
func (f *Flags) Describe(err error) string {
	// The innermost status: its message without the wrapping's prefixes.
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) || se.GRPCStatus() == nil {
		return err.Error()
	}
	st := se.GRPCStatus()
	msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	switch st.Code() {
	case codes.Unauthenticated:
		if f.Token() == "" {
			return msg + " (give a token with --token or $" + TokenEnv + ")"
		}
		return msg + " (check --token or $" + TokenEnv + ")"
	case codes.PermissionDenied:
		return msg + " (use a token with that role, or for a consumer group one whose groups name it)"
	case codes.Unavailable:
		return msg + " (check --addr, and the transport: --tls or --ca-file for a nudged serving TLS, --cert-file and --key-file for one requiring client certificates)"
	}
	return msg
}
