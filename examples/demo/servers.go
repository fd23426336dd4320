package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/apiquota/limiter"
	"github.com/apiquota/limiter/internal/throttleserver"
)

// The servers of the -server flag, with the defaults that make each run
// last about twenty seconds.
var servers = map[string]struct {
	about               string
	limit, burst, calls int
	window              time.Duration
	describe            func(opt options) string
	config              func(opt options) throttleserver.Config
	newLimiterTransport func(opt options, base http.RoundTripper) (*limiter.Transport, error)
	plan                func(i int) call
}{
	"window": {
		about: "a sliding window, as the APIs this module was built for count",
		limit: limiter.DefaultLimit, window: 10 * time.Second, calls: 300,
		describe: func(o options) string {
			return fmt.Sprintf("sliding window: %d calls per %v per API key", o.limit, o.window)
		},
		config: func(o options) throttleserver.Config {
			return throttleserver.Config{Limit: o.limit, Window: o.window, CountRefused: o.countRefused}
		},
		newLimiterTransport: naiveTransport,
		plan:                plainCalls,
	},
	"bucket": {
		about: "a leaky bucket like nginx limit_req (rate, burst, nodelay); 429 without Retry-After",
		limit: 10, window: time.Second, burst: 5, calls: 150,
		describe: func(o options) string {
			return fmt.Sprintf("leaky bucket like nginx limit_req: rate %d per %v, burst %d, 429 without Retry-After", o.limit, o.window, o.burst)
		},
		config: func(o options) throttleserver.Config {
			return throttleserver.Config{Mode: throttleserver.ModeBucket, Limit: o.limit, Window: o.window, Burst: o.burst}
		},
		newLimiterTransport: naiveTransport,
		plan:                plainCalls,
	},
	"github": {
		about: "GitHub's primary limit: a fixed window, X-RateLimit-* headers, 403 when spent",
		limit: limiter.DefaultLimit, window: 10 * time.Second, calls: 250,
		describe: func(o options) string {
			return fmt.Sprintf("GitHub-style fixed window: %d calls per %v per API key, X-RateLimit headers, 403 when spent", o.limit, o.window)
		},
		config: func(o options) throttleserver.Config {
			return throttleserver.Config{Mode: throttleserver.ModeGitHub, Limit: o.limit, Window: o.window}
		},
		newLimiterTransport: naiveTransport,
		plan:                plainCalls,
	},
	"layered": {
		about: "Microsoft Defender's layered quotas, a minute scaled to -window: 100 per minute and 1,500 per hour per key, advanced hunting 45 per minute, $batch charged per inner request",
		limit: 100, window: 10 * time.Second, calls: 220,
		describe: func(o options) string {
			return fmt.Sprintf("layered quotas (Defender's, a minute scaled to %v): 100 per %v and 1500 per %v per key, advanced hunting 45 per %v, $batch charged per inner request",
				o.window, o.window, 60*o.window, o.window)
		},
		config: func(o options) throttleserver.Config {
			cfg := throttleserver.Defender(o.window)
			cfg.CountRefused = o.countRefused
			return cfg
		},
		newLimiterTransport: defenderTransport,
		plan:                defenderCalls,
	},
}

// serverNames lists the -server values in the order the help shows them.
var serverNames = []string{"window", "bucket", "github", "layered"}

// call is one API call of a plan.
type call struct {
	method, path string
	batch        int // inner requests of a $batch; 0 for a plain call
}

// cost is what the server charges for c.
func (c call) cost() int { return max(c.batch, 1) }

// request builds the http.Request of c. A $batch carries a body with
// c.batch inner requests; http.NewRequest sets GetBody, so it can be
// replayed.
func (c call) request(base string) (*http.Request, error) {
	var body io.Reader
	if c.batch > 0 {
		inner := make([]string, c.batch)
		for i := range inner {
			inner[i] = fmt.Sprintf(`{"id":"%d","method":"GET","url":"/api/machines/%d"}`, i+1, i)
		}
		body = strings.NewReader(`{"requests":[` + strings.Join(inner, ",") + `]}`)
	}
	return http.NewRequest(c.method, base+c.path, body)
}

func plainCalls(int) call { return call{method: http.MethodGet, path: "/v1/items"} }

// defenderCalls mixes what a Defender client sends: one call in five is an
// advanced hunting query, one in twenty-five a $batch of 10, the rest are
// machine lookups.
func defenderCalls(i int) call {
	switch {
	case i%25 == 24:
		return call{method: http.MethodPost, path: throttleserver.BatchPath, batch: 10}
	case i%5 == 0:
		return call{method: http.MethodPost, path: "/api/advancedqueries/run"}
	default:
		return call{method: http.MethodGet, path: fmt.Sprintf("/api/machines/%d", i)}
	}
}

// naiveTransport is the limiter as a newcomer sets it up: the server's
// advertised numbers as a sliding window, nothing more. What the server's
// model adds (a bucket, fixed windows) the Transport learns.
func naiveTransport(o options, base http.RoundTripper) (*limiter.Transport, error) {
	l, err := limiter.New(o.limit, o.window)
	if err != nil {
		return nil, err
	}
	return limiter.NewTransport(base, l), nil
}

// defenderTransport states Defender's quotas, as examples/defender does:
// the tenant's two windows, the advanced hunting route and $batch weighed
// by its inner requests.
func defenderTransport(o options, base http.RoundTripper) (*limiter.Transport, error) {
	l, err := limiter.New(100, o.window, limiter.WithWindow(1500, 60*o.window))
	if err != nil {
		return nil, err
	}
	t := limiter.NewTransport(base, l)
	if err := t.Route(throttleserver.AdvancedHuntingRoute, 45, o.window); err != nil {
		return nil, err
	}
	if err := t.Route(throttleserver.IncidentsRoute, 50, o.window); err != nil {
		return nil, err
	}
	t.Cost = batchCost
	return t, nil
}

// batchCost weighs a $batch by its inner requests, read from a copy of the
// body that GetBody hands out.
func batchCost(req *http.Request) int {
	if !throttleserver.IsBatch(req) || req.GetBody == nil {
		return 1
	}
	body, err := req.GetBody()
	if err != nil {
		return 1
	}
	defer body.Close()
	return throttleserver.BatchSize(body)
}

// idealWall is the fastest any client could make opt.calls calls: the
// instant the server could accept the last one (throttleserver.Fastest)
// plus one round trip of the mean latency, and never less than the workers
// need to make them all one round trip at a time.
func idealWall(opt options) time.Duration {
	srv := servers[opt.server]
	reqs := make([]*http.Request, opt.calls)
	for i := range reqs {
		req, err := srv.plan(i).request("http://demo")
		if err != nil {
			panic(err) // the plans build valid requests
		}
		reqs[i] = req
	}
	mean := (opt.latency.min + opt.latency.max) / 2
	quota := throttleserver.Fastest(srv.config(opt), reqs) + mean
	workers := time.Duration(ceilDiv(opt.calls, opt.workers)) * mean
	return max(quota, workers)
}
