package daemon

import (
	"io"
	"strings"
	"testing"
)

// http.listen: auto follows the gRPC port on loopback, off turns it off,
// an address is taken as it is; a non-loopback one needs tokens and TLS
// like listen.
func TestHTTPListen(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	for _, tt := range []struct {
		name string
		args []string
		want string // the resolved address, or the error
		err  bool
	}{
		{name: "default", want: "127.0.0.1:7080"},
		{name: "auto beside another port", args: []string{"--listen", "127.0.0.1:9000"}, want: "127.0.0.1:9010"},
		{name: "auto beside a free port", args: []string{"--listen", "127.0.0.1:0"}, want: "127.0.0.1:0"},
		{name: "auto stays on loopback", args: []string{"--listen", "0.0.0.0:7070", "--insecure"}, want: "127.0.0.1:7080"},
		{name: "auto beside localhost", args: []string{"--listen", "localhost:7070"}, want: "localhost:7080"},
		{name: "off", args: []string{"--http-listen", "off"}, want: ""},
		{name: "an address", args: []string{"--http-listen", "127.0.0.1:8080"}, want: "127.0.0.1:8080"},
		{name: "public with --insecure", args: []string{"--http-listen", "0.0.0.0:8080", "--insecure"}, want: "0.0.0.0:8080"},
		{name: "public without tokens", args: []string{"--http-listen", "0.0.0.0:8080"}, err: true, want: "http.listen 0.0.0.0:8080 is not a loopback address and no auth tokens"},
		{name: "not an address", args: []string{"--http-listen", "8080"}, err: true, want: `http.listen: "8080" is not host:port, auto or off`},
		{name: "auto past the last port", args: []string{"--listen", "127.0.0.1:65530"}, err: true, want: "http.listen: auto takes the port of listen 127.0.0.1:65530 plus 10"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			loaded, err := Load(tt.args, noEnv, io.Discard)
			if tt.err {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err = %v, want one containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := loaded.Config.httpListen()
			if err != nil || got != tt.want {
				t.Errorf("httpListen() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
