package integration

import (
	"context"
	"errors"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-github/v93/github"
	"github.com/hashicorp/go-retryablehttp"

	"github.com/apiquota/limiter"
)

// The recipes below are what a client of each library copies. The rule
// they share: exactly one layer retries. The limiter's Transport always
// paces every attempt and pauses after a throttled response (the wait the
// server named); under a client that retries by itself, its own retries
// are switched off (Transport.MaxRetries = 0), or every retry of the client
// would be multiplied by the Transport's.

// AzureClientOptions returns azcore client options that send every attempt
// of azcore's pipeline through tr, for any Azure SDK client or
// runtime.NewPipeline:
//
//	l, _ := limiter.New(100, time.Minute, limiter.WithWindow(1500, time.Hour))
//	tr := limiter.NewTransport(nil, l)
//	client, err := armsomething.NewClient(cred, integration.AzureClientOptions(tr))
//
// azcore's retry policy retries (it honours Retry-After and retry-after-ms
// and stops at an error that says it is NonRetriable, as the limiter's
// ErrWouldExceedDeadline does), so AzureClientOptions sets tr.MaxRetries to
// 0; the Transport still waits for a permit before each attempt and pauses
// the limiter on a 429, so azcore's retry waits in the limiter, not against
// the server. A wait longer than azcore's MaxRetryDelay (default 60 s) is
// not retried by azcore: raise it to retry after long throttles.
func AzureClientOptions(tr *limiter.Transport) *policy.ClientOptions {
	tr.MaxRetries = 0
	return &policy.ClientOptions{Transport: &http.Client{Transport: tr}}
}

// RetryableClient returns a go-retryablehttp client whose attempts go
// through tr. The same rule: retryablehttp retries (its DefaultBackoff
// honours Retry-After on 429 and 503), so tr.MaxRetries is set to 0, and
// CheckRetry is RetryPolicy, so that a call the limiter cannot admit before
// the context's deadline fails at once instead of being retried into the
// deadline. Set RetryMax and the waits on the result as usual.
func RetryableClient(tr *limiter.Transport) *retryablehttp.Client {
	tr.MaxRetries = 0
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Transport: tr}
	c.CheckRetry = RetryPolicy
	c.Logger = nil
	return c
}

// RetryPolicy is retryablehttp.DefaultRetryPolicy, except that an error
// that says it is not worth retrying (the limiter's ErrWouldExceedDeadline
// has NonRetriable, and is a timeout) ends the call at once.
func RetryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	var nr interface{ NonRetriable() }
	if errors.As(err, &nr) || errors.Is(err, limiter.ErrWouldExceedDeadline) {
		return false, err
	}
	return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
}

// GitHubClient returns a go-github client whose requests go through tr,
// for the API at baseURL ("" for api.github.com; for another host, end it
// with a slash). The Transport reads GitHub's X-RateLimit headers and waits
// for the reset itself, and retries 403 with Retry-After (the secondary
// limit), so go-github's own check is switched off
// (WithDisableRateLimitCheck): with it on, go-github fails a call at once
// with *github.RateLimitError when the last response said Remaining: 0,
// where the Transport would have waited for the reset. go-github does not
// retry, so tr keeps its retries.
func GitHubClient(tr *limiter.Transport, baseURL string) (*github.Client, error) {
	opts := []github.ClientOptionsFunc{github.WithTransport(tr), github.WithDisableRateLimitCheck()}
	if baseURL != "" {
		opts = append(opts, github.WithURLs(&baseURL, &baseURL))
	}
	return github.NewClient(opts...)
}
