package webhook_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nudge-dm/nudge/webhook"
)

func TestSignKnownVector(t *testing.T) {
	// RFC 4231-style check against an independent HMAC-SHA256
	// implementation (Python's hmac module gives the same hex).
	got := webhook.Sign([]byte("key"), []byte("The quick brown fox jumps over the lazy dog"))
	want := "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
	if got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	secret, body := []byte("s3cret"), []byte(`{"actionId":"a_1"}`)
	good := webhook.Sign(secret, body)
	for _, tc := range []struct {
		name   string
		secret []byte
		body   []byte
		header string
		want   bool
	}{
		{name: "its own signature", secret: secret, body: body, header: good, want: true},
		{name: "upper-case hex", secret: secret, body: body, header: "sha256=" + strings.ToUpper(strings.TrimPrefix(good, "sha256=")), want: true},
		{name: "another secret", secret: []byte("other"), body: body, header: good},
		{name: "body changed by one byte", secret: secret, body: []byte(`{"actionId":"a_2"}`), header: good},
		{name: "body re-encoded with a space", secret: secret, body: []byte(`{"actionId": "a_1"}`), header: good},
		{name: "no algorithm prefix", secret: secret, body: body, header: strings.TrimPrefix(good, "sha256=")},
		{name: "another algorithm", secret: secret, body: body, header: "sha1=" + strings.TrimPrefix(good, "sha256=")},
		{name: "not hex", secret: secret, body: body, header: "sha256=zz"},
		{name: "truncated", secret: secret, body: body, header: good[:len(good)-2]},
		{name: "empty", secret: secret, body: body, header: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := webhook.Verify(tc.secret, tc.body, tc.header); got != tc.want {
				t.Errorf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
}

// A receiver checks the signature of the raw body before decoding it.
func ExampleVerify() {
	secret := []byte("s3cret")
	body := []byte(`{"actionId":"a_1"}`) // as read from the request
	header := "sha256=78f52e17fb8ae13c238ca153b8e91d8f47f5e40b6da793b9907156efc17d48d0"
	fmt.Println(webhook.Verify(secret, body, header))
	fmt.Println(webhook.Sign(secret, body) == header)
	// Output:
	// true
	// true
}

func FuzzVerify(f *testing.F) {
	f.Add([]byte("s3cret"), []byte(`{"actionId":"a_1"}`), "sha256=00")
	f.Fuzz(func(t *testing.T, secret, body []byte, header string) {
		ok := webhook.Verify(secret, body, header)
		if ok != (strings.EqualFold(header, webhook.Sign(secret, body)) && strings.HasPrefix(header, "sha256=")) {
			t.Errorf("Verify(%q, %q, %q) = %v", secret, body, header, ok)
		}
		if !webhook.Verify(secret, body, webhook.Sign(secret, body)) {
			t.Errorf("Verify refuses Sign's own signature")
		}
	})
}
