package webhook_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/webhook"
)

func TestConfigValidate(t *testing.T) {
	good := webhook.Config{Name: "sms-gw", URL: "https://sms.example.com/nudge", Secret: "0123456789abcdef"}
	for _, tc := range []struct {
		name string
		edit func(c *webhook.Config)
		want string // "" = valid; else a part of the error
	}{
		{name: "minimal is valid", edit: func(*webhook.Config) {}},
		{name: "everything set", edit: func(c *webhook.Config) {
			c.Channels, c.Timeout, c.MaxInFlight = []string{"sms", "push_v2"}, 3*time.Second, 1
			c.BackoffMin, c.BackoffMax, c.MaxAge = time.Second, time.Minute, time.Hour
		}},
		{name: "http on loopback", edit: func(c *webhook.Config) { c.URL = "http://127.0.0.1:9000/hook?x=1" }},
		{name: "no name", edit: func(c *webhook.Config) { c.Name = "" }, want: `name: ""`},
		{name: "name with a slash", edit: func(c *webhook.Config) { c.Name = "a/b" }, want: "name: \"a/b\" is not a safe name"},
		{name: "name in capitals", edit: func(c *webhook.Config) { c.Name = "SMS" }, want: "name:"},
		{name: "name starting with a dash", edit: func(c *webhook.Config) { c.Name = "-x" }, want: "name:"},
		{name: "name too long", edit: func(c *webhook.Config) { c.Name = strings.Repeat("a", 49) }, want: "name:"},
		{name: "no url", edit: func(c *webhook.Config) { c.URL = "" }, want: "url: required"},
		{name: "relative url", edit: func(c *webhook.Config) { c.URL = "/hook" }, want: "not an absolute http:// or https:// URL"},
		{name: "ftp url", edit: func(c *webhook.Config) { c.URL = "ftp://example.com/x" }, want: "url:"},
		{name: "url without host", edit: func(c *webhook.Config) { c.URL = "https:///x" }, want: "has no host"},
		{name: "url with a fragment", edit: func(c *webhook.Config) { c.URL = "https://example.com/x#frag" }, want: "fragment"},
		{name: "url that does not parse hides its password", edit: func(c *webhook.Config) { c.URL = "https://u:hunter2@exa mple.com/" }, want: "url: not a URL"},
		{name: "bad channel", edit: func(c *webhook.Config) { c.Channels = []string{"SMS"} }, want: `channels: "SMS" is not a channel name`},
		{name: "empty channel", edit: func(c *webhook.Config) { c.Channels = []string{""} }, want: "channels:"},
		{name: "channel twice", edit: func(c *webhook.Config) { c.Channels = []string{"sms", "sms"} }, want: `channels: "sms" is listed twice`},
		{name: "no secret", edit: func(c *webhook.Config) { c.Secret = "" }, want: "secret: required"},
		{name: "blank secret", edit: func(c *webhook.Config) { c.Secret = " \n" }, want: "secret: required"},
		{name: "negative timeout", edit: func(c *webhook.Config) { c.Timeout = -time.Second }, want: "timeout: -1s"},
		{name: "negative max_in_flight", edit: func(c *webhook.Config) { c.MaxInFlight = -1 }, want: "max_in_flight: -1; want 1 or more"},
		{name: "negative backoff_min", edit: func(c *webhook.Config) { c.BackoffMin = -time.Second }, want: "backoff_min: -1s"},
		{name: "negative backoff_max", edit: func(c *webhook.Config) { c.BackoffMax = -time.Second }, want: "backoff_max: -1s"},
		{name: "backoff min above max", edit: func(c *webhook.Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Second }, want: "backoff_min: 1m0s is above backoff_max 1s"},
		{name: "backoff min above the default max", edit: func(c *webhook.Config) { c.BackoffMin = time.Minute }},
		{name: "negative max_age", edit: func(c *webhook.Config) { c.MaxAge = -time.Hour }, want: "max_age"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate = %v, want an error with %q", err, tc.want)
			case err != nil && !errors.Is(err, webhook.ErrInvalidConfig):
				t.Errorf("Validate = %v, not ErrInvalidConfig", err)
			case err != nil && !errors.As(err, new(*webhook.ConfigError)):
				t.Errorf("Validate = %v, not a *ConfigError", err)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Errorf("Validate = %v shows the URL's password", err)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	a := webhook.Config{Name: "a", URL: "http://127.0.0.1:1/", Secret: "s"}
	for _, tc := range []struct {
		name  string
		hooks []webhook.Config
		opt   webhook.Options
		want  string
	}{
		{name: "an invalid webhook", hooks: []webhook.Config{{Name: "a", URL: "http://127.0.0.1:1/"}}, want: `webhook "a": invalid webhook: secret: required`},
		{name: "one name twice", hooks: []webhook.Config{a, a}, want: `webhook "a": invalid webhook: name: used twice`},
		{name: "a timeout outlasting the visibility", hooks: []webhook.Config{a}, opt: webhook.Options{Visibility: 5 * time.Second},
			want: "timeout: 10s is not shorter than the visibility timeout 5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := webhook.New(nil, tc.hooks, tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, webhook.ErrInvalidConfig) {
				t.Errorf("New = %v, want an ErrInvalidConfig with %q", err, tc.want)
			}
		})
	}
}
