package redisstore

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
)

// readAll parses wire as RESP3 replies, the peer writing it at once.
func readAll(t *testing.T, wire string, n int) ([]any, error) {
	t.Helper()
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		_, _ = server.Write([]byte(wire))
		server.Close()
	}()
	c := newRESPConn(client)
	var out []any
	for range n {
		v, err := c.read()
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

func TestRESP3Read(t *testing.T) {
	// An invalidation longer than the read buffer, so that parsing its
	// keys refills the buffer under the push's header.
	var keys []any
	var push strings.Builder
	for i := range 2000 {
		k := fmt.Sprintf("nudge:{%d}:p:user-%d", i%1024, i)
		keys = append(keys, k)
		fmt.Fprintf(&push, "$%d\r\n%s\r\n", len(k), k)
	}
	bigPush := fmt.Sprintf(">2\r\n$10\r\ninvalidate\r\n*%d\r\n%s", len(keys), push.String())
	tests := []struct {
		name string
		wire string
		want []any
	}{
		{"simple, error, integer, null, bool", "+PONG\r\n-ERR unknown\r\n:42\r\n_\r\n#t\r\n",
			[]any{"PONG", respError("ERR unknown"), int64(42), nil, true}},
		{"bulk, null bulk, blob error, verbatim", "$5\r\nhello\r\n$-1\r\n!9\r\nERR oops!\r\n=7\r\ntxt:abc\r\n",
			[]any{"hello", nil, respError("ERR oops!"), "txt:abc"}},
		{"map (HELLO's reply) flattened", "%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n",
			[]any{[]any{"server", "redis", "proto", int64(3)}}},
		{"attribute before a reply", "|1\r\n+key\r\n+val\r\n+OK\r\n", []any{"OK"}},
		{"flush: invalidate with null", ">2\r\n$10\r\ninvalidate\r\n_\r\n", []any{respPush{kind: "invalidate", args: []any{nil}}}},
		{"a large invalidation between replies", "+PONG\r\n" + bigPush + "+PONG\r\n",
			[]any{"PONG", respPush{kind: "invalidate", args: []any{keys}}, "PONG"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(t, tt.wire, len(tt.want))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %s\nwant %s", short(got), short(tt.want))
			}
		})
	}
}

func TestRESP3ReadMalformed(t *testing.T) {
	for _, wire := range []string{
		"?what\r\n",        // unknown type
		"+no crlf\n",       // LF alone
		":abc\r\n",         // not a number
		"$-5\r\n",          // bad length
		"*99999999999\r\n", // too many items
		">0\r\n",           // empty push
		"$3\r\nab",         // cut short
	} {
		if _, err := readAll(t, wire, 1); err == nil {
			t.Errorf("%q: no error", wire)
		} else if !errors.Is(err, errRESPProtocol) && !strings.Contains(err.Error(), "EOF") {
			t.Errorf("%q: %v", wire, err)
		}
	}
}

// short is v printed, cut to 300 bytes.
func short(v any) string {
	s := fmt.Sprint(v)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// Only a server that cannot track turns the near-cache off for good; one
// that cannot now (loading its data, refusing the password) is tried
// again.
func TestTrackingUnsupportedReplies(t *testing.T) {
	for reply, want := range map[string]bool{
		"ERR unknown command 'HELLO', with args beginning with: '3' ": true,
		"NOPROTO unsupported protocol version":                        true,
		"ERR unknown subcommand 'TRACKING'. Try CLIENT HELP.":         true,
		"ERR syntax error": true,
		"ERR wrong number of arguments for 'client' command":                true,
		"LOADING Redis is loading the dataset in memory":                    false,
		"WRONGPASS invalid username-password pair or user is disabled.":     false,
		"NOAUTH HELLO must be called with the client already authenticated": false,
		"BUSY Redis is busy running a script":                               false,
	} {
		if got := unsupported(respError(reply)); got != want {
			t.Errorf("%q: unsupported %v, want %v", reply, got, want)
		}
	}
}
