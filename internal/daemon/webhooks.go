package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/webhook"
)

// WebhookConfig is one entry of the webhooks section (webhook.Config):
// nudged POSTs every action on its channels to URL, signed with its
// secret, from its own consumer group "webhook-<name>", at least once.
// The zero value of a field means its default.
type WebhookConfig struct {
	// Name identifies the webhook in logs, metrics and its consumer group.
	// Required: 1 to 48 of a-z, 0-9, "_", "-".
	Name string `yaml:"name"`
	// URL receives a POST per action. Required: absolute http(s).
	URL string `yaml:"url"`
	// Channels: only actions on these channels; the others are
	// acknowledged for the webhook's group unsent. Default: every channel.
	Channels []string `yaml:"channels"`
	// Secret keys X-Nudge-Signature. Required, here or in SecretFile.
	// Prefer SecretFile to a secret in the config file.
	Secret string `yaml:"secret"`
	// SecretFile holds the secret (trailing newline ignored).
	SecretFile string `yaml:"secret_file"`
	// Timeout bounds one attempt; shorter than
	// delivery.visibility_timeout. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxInFlight bounds the requests in flight. Default 16.
	MaxInFlight int `yaml:"max_in_flight"`
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between attempts. Defaults 500ms and 30s.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// MaxAge: actions older than this are acknowledged unsent. Default 0:
	// no limit.
	MaxAge time.Duration `yaml:"max_age"`
}

// config is the webhook package's view of w.
func (w WebhookConfig) config() webhook.Config {
	return webhook.Config{
		Name: w.Name, URL: w.URL, Channels: w.Channels, Secret: w.Secret, Timeout: w.Timeout,
		MaxInFlight: w.MaxInFlight, BackoffMin: w.BackoffMin, BackoffMax: w.BackoffMax, MaxAge: w.MaxAge,
	}
}

// key names the webhook at index i in errors: webhooks[i], with its name.
func webhookKey(i int, w WebhookConfig) string {
	if w.Name == "" {
		return fmt.Sprintf("webhooks[%d]", i)
	}
	return fmt.Sprintf("webhooks[%d] (%s)", i, w.Name)
}

// resolveWebhookSecrets reads the secret_file of every webhook.
func (c *Config) resolveWebhookSecrets() error {
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if w.SecretFile == "" {
			continue
		}
		if w.Secret != "" {
			return fmt.Errorf("%s: secret and secret_file exclude each other", webhookKey(i, *w))
		}
		b, err := os.ReadFile(w.SecretFile)
		if err != nil {
			return fmt.Errorf("%s.secret_file: %w", webhookKey(i, *w), err)
		}
		w.Secret = strings.TrimRight(string(b), "\r\n")
		w.SecretFile = ""
	}
	return nil
}

// validateWebhooks reports the first webhook setting that cannot work, by
// its key: webhooks[i].field.
func (c Config) validateWebhooks() error {
	visibility := c.Delivery.VisibilityTimeout
	if visibility <= 0 {
		visibility = delivery.DefaultOptions().Visibility
	}
	names := make(map[string]int, len(c.Webhooks))
	for i, w := range c.Webhooks {
		key := webhookKey(i, w)
		if err := w.config().Validate(); err != nil {
			var ce *webhook.ConfigError
			if errors.As(err, &ce) {
				if ce.Field == "secret" && w.SecretFile == "" {
					ce.Problem += "; set secret or secret_file"
				}
				return fmt.Errorf("%s.%s: %s", key, ce.Field, ce.Problem)
			}
			return fmt.Errorf("%s: %w", key, err)
		}
		if j, dup := names[w.Name]; dup {
			return fmt.Errorf("%s.name: webhooks[%d] has the name %q already: names must be unique", key, j, w.Name)
		}
		names[w.Name] = i
		timeout := w.Timeout
		if timeout == 0 {
			timeout = webhook.DefaultTimeout
		}
		if timeout >= visibility {
			return fmt.Errorf("%s.timeout: %v is not shorter than delivery.visibility_timeout %v: an attempt would outlast its delivery, and the action be sent again meanwhile",
				key, timeout, visibility)
		}
	}
	return nil
}

// redactWebhooks returns webhooks with their secrets (and URL passwords)
// replaced, for --print-config.
func redactWebhooks(webhooks []WebhookConfig) []WebhookConfig {
	out := slices.Clone(webhooks)
	for i := range out {
		if out[i].Secret != "" {
			out[i].Secret = redacted
		}
		out[i].URL = redactURL(out[i].URL)
	}
	return out
}

// newWebhooks builds the webhooks' dispatcher on the outbox (nil when none
// is configured), and warns about channels the rules never name: an
// action on them cannot come until the rules change.
func newWebhooks(cfg Config, outbox *delivery.Outbox, meter metric.Meter, ruleChannels []string, log *slog.Logger) (*webhook.Dispatcher, error) {
	if len(cfg.Webhooks) == 0 {
		return nil, nil
	}
	hooks := make([]webhook.Config, 0, len(cfg.Webhooks))
	for _, w := range cfg.Webhooks {
		for _, ch := range w.Channels {
			if !slices.Contains(ruleChannels, ch) {
				log.Warn("webhook channel not named by the rules: no action goes there until the rules name it", "webhook", w.Name, "channel", ch, "rules_channels", ruleChannels)
			}
		}
		hooks = append(hooks, w.config())
	}
	d, err := webhook.New(outbox, hooks, webhook.Options{
		Visibility: cfg.Delivery.VisibilityTimeout, MaxDeliveries: cfg.Delivery.MaxDeliveries,
		Meter: meter, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("webhooks: %w", err)
	}
	return d, nil
}
