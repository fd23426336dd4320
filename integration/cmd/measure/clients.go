package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/hashicorp/go-retryablehttp"

	"github.com/apiquota/limiter"
	"github.com/apiquota/limiter/integration"
)

// refusing is a server that throttles every call with the given headers
// and counts them.
type refusing struct {
	headers map[string]string
	calls   atomic.Int64
}

func (s *refusing) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.calls.Add(1)
	for k, v := range s.headers {
		w.Header().Set(k, v)
	}
	w.WriteHeader(http.StatusTooManyRequests)
}

// layer is how the client under test sits over the Transport.
type layer int

const (
	alone   layer = iota // the client without the limiter
	stacked              // over a Transport left at its defaults
	recipe               // over a Transport set up by the integration recipe
)

func (l layer) String() string {
	return [...]string{"alone (no limiter)", "over the Transport, defaults (MaxRetries 2)", "over the Transport, the recipe (MaxRetries 0)"}[l]
}

func transport(t layer) *limiter.Transport {
	l, _ := limiter.New(100, time.Minute)
	tr := limiter.NewTransport(nil, l)
	if t == recipe {
		tr.MaxRetries = 0
	}
	return tr
}

// always429 runs one call of do against a server that always answers 429
// with Retry-After: 1.
func always429(ctx context.Context, do func(ctx context.Context, url string) error) (result, error) {
	srv := &refusing{headers: map[string]string{"Retry-After": "1"}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	start := time.Now()
	err := do(ctx, hs.URL)
	res := result{calls: int(srv.calls.Load()), wall: time.Since(start), later: -1}
	res.throttled = res.calls
	if err != nil {
		res.failed = 1
	}
	return res, nil
}

func azcoreCall(t layer) func(ctx context.Context, url string) error {
	return func(ctx context.Context, url string) error {
		opts := &policy.ClientOptions{}
		if t != alone {
			opts.Transport = &http.Client{Transport: transport(t)}
		}
		opts.Retry = policy.RetryOptions{MaxRetries: 3}
		pl := runtime.NewPipeline("measure", "v0.0.0", runtime.PipelineOptions{}, opts)
		req, err := runtime.NewRequest(ctx, http.MethodPost, url)
		if err != nil {
			return err
		}
		if err := req.SetBody(streaming.NopCloser(bytes.NewReader([]byte(`{"q":1}`))), "application/json"); err != nil {
			return err
		}
		resp, err := pl.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
}

func retryableCall(t layer) func(ctx context.Context, url string) error {
	return func(ctx context.Context, url string) error {
		c := retryablehttp.NewClient()
		c.Logger = nil
		if t != alone {
			tr := transport(t)
			c.HTTPClient = &http.Client{Transport: tr}
			if t == recipe {
				c = integration.RetryableClient(tr)
			}
		}
		c.RetryMax = 3
		req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
}

// deadline runs one call of do with a 5 s deadline through a limiter that
// is spent for an hour: it should fail at once, not sleep into the
// deadline.
func deadline(ctx context.Context, do func(ctx context.Context, url string, l *limiter.Limiter) error) (result, error) {
	srv := &refusing{}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	l, _ := limiter.New(1, time.Hour)
	l.Allow()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	err := do(ctx, hs.URL, l)
	res := result{calls: int(srv.calls.Load()), wall: time.Since(start), later: -1}
	if err != nil {
		res.failed = 1
		res.note = fmt.Sprintf("error: %v", err)
	}
	return res, nil
}

func clientRows() []row {
	var rows []row
	for _, t := range []layer{alone, stacked, recipe} {
		rows = append(rows, row{against: "azcore (MaxRetries 3) against a server that always answers 429, Retry-After: 1",
			setup: t.String(), run: func(ctx context.Context) (result, error) { return always429(ctx, azcoreCall(t)) }})
	}
	for _, t := range []layer{alone, stacked, recipe} {
		rows = append(rows, row{against: "go-retryablehttp (RetryMax 3), the same server",
			setup: t.String(), run: func(ctx context.Context) (result, error) { return always429(ctx, retryableCall(t)) }})
	}
	rows = append(rows,
		row{against: "`Retry-After: 3600`, MaxRetryAfter 5 min", setup: "New(100, time.Minute), defaults",
			run: func(ctx context.Context) (result, error) {
				srv := &refusing{headers: map[string]string{"Retry-After": "3600"}}
				hs := httptest.NewServer(srv)
				defer hs.Close()
				tr := transport(stacked)
				start := time.Now()
				resp, err := (&http.Client{Transport: tr}).Get(hs.URL)
				res := result{calls: int(srv.calls.Load()), throttled: int(srv.calls.Load()), wall: time.Since(start), later: -1}
				if err != nil {
					return res, err
				}
				resp.Body.Close()
				res.note = "returned " + resp.Status
				return res, nil
			}},
		row{against: "`ErrWouldExceedDeadline` inside azcore (limiter spent for an hour, 5 s deadline)", setup: "the recipe",
			run: func(ctx context.Context) (result, error) {
				return deadline(ctx, func(ctx context.Context, url string, l *limiter.Limiter) error {
					opts := integration.AzureClientOptions(limiter.NewTransport(nil, l))
					pl := runtime.NewPipeline("measure", "v0.0.0", runtime.PipelineOptions{}, opts)
					req, err := runtime.NewRequest(ctx, http.MethodGet, url)
					if err != nil {
						return err
					}
					_, err = pl.Do(req)
					return err
				})
			}},
		row{against: "`ErrWouldExceedDeadline` inside go-retryablehttp, the same", setup: "the recipe",
			run: func(ctx context.Context) (result, error) {
				return deadline(ctx, func(ctx context.Context, url string, l *limiter.Limiter) error {
					req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, url, nil)
					if err != nil {
						return err
					}
					_, err = integration.RetryableClient(limiter.NewTransport(nil, l)).Do(req)
					return err
				})
			}},
	)
	return rows
}
