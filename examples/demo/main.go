// Command demo shows what happens to three clients that make the same calls
// through a strict, rate-limited API:
//
//	none         a plain http.Client that retries a throttled call after the server's wait
//	x/time/rate  the same, pacing every attempt with rate.NewLimiter(rate.Every(w/n), n)
//	limiter      an http.Client whose Transport is limiter.NewTransport
//
// It starts a local API server on 127.0.0.1 (internal/throttleserver) and
// runs the three clients side by side, each with its own API key, several
// workers and a fixed number of calls. At the end it prints, from the
// server's own log, how many calls each client had refused, how long it
// took against the fastest the server allows, and its calls per second.
//
// The -server flag picks the server's model:
//
//	window   (default) a sliding window: at most n calls in any interval of
//	         length w, 429 with Retry-After beyond it, as the APIs this
//	         module was built for count. The limiter's own model: no 429.
//	bucket   a leaky bucket like nginx limit_req (rate=10r/s burst=5
//	         nodelay), 429 without Retry-After. The limiter is set up
//	         naively, New(10, time.Second); the Transport learns the bucket
//	         from the first refusals.
//	github   GitHub's primary limit: a fixed window that resets at the time
//	         X-RateLimit-Reset names, 403 when spent. The Transport reads
//	         X-RateLimit-Remaining and waits for the reset.
//	layered  Microsoft Defender's quotas (100 per minute and 1,500 per hour
//	         per key, advanced hunting 45 per minute, a $batch charged per
//	         inner request), a minute scaled to -window; the limiter states
//	         them (a route for advanced hunting, Cost for $batch), as
//	         examples/defender does.
//
// A token bucket with burst n lets n calls through at once and then keeps
// refilling while those n calls are still in the server's window, so it earns
// 429s. The sliding-window limiter admits a call exactly when the oldest one
// leaves the window.
//
// Usage:
//
//	go run ./examples/demo                 # sliding window, 300 calls at 100 per 10 s: about 20 s
//	go run ./examples/demo -server bucket  # nginx's leaky bucket, 150 calls at 10/s: about 15 s
//	go run ./examples/demo -server github  # GitHub's fixed window, 250 calls at 100 per 10 s: about 23 s
//	go run ./examples/demo -server layered # Defender's layered quotas, 220 calls (charged 292): about 20 s
//	go run ./examples/demo -window 60s     # the real quota, 100 calls per minute (about 2 min)
//	go run ./examples/demo -json           # one JSON object per client, for scripts
//	go run ./examples/demo -count-refused=false  # a server whose 429s do not count against the quota
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/apiquota/limiter/internal/throttleserver"
)

// options are the command-line flags.
type options struct {
	server       string // a key of servers
	limit        int
	window       time.Duration
	burst        int
	calls        int
	workers      int
	latency      latencyRange
	seed         uint64
	countRefused bool
	json         bool
}

func main() {
	opt := options{latency: latencyRange{5 * time.Millisecond, 50 * time.Millisecond}}
	flag.StringVar(&opt.server, "server", "window", "the server's model: "+strings.Join(serverNames, ", "))
	flag.IntVar(&opt.limit, "limit", 0, "calls the server accepts per window and API key (default: 100; bucket: 10)")
	flag.DurationVar(&opt.window, "window", 0, "length of the server's window (default 10s, bucket 1s; 60s is the real quota)")
	flag.IntVar(&opt.burst, "burst", 0, "the bucket's burst, as nginx counts it (default 5)")
	flag.IntVar(&opt.calls, "calls", 0, "calls each client makes (default: about 20 s of quota)")
	flag.IntVar(&opt.workers, "workers", 8, "concurrent workers per client")
	flag.Var(&opt.latency, "latency", "server latency per accepted call: a range MIN-MAX or a single duration")
	flag.Uint64Var(&opt.seed, "seed", 1, "seed of the server's random latency")
	flag.BoolVar(&opt.countRefused, "count-refused", true, "the server counts refused (429) calls against its sliding windows, as many real APIs do")
	flag.BoolVar(&opt.json, "json", false, "print one JSON object per client instead of the table")
	flag.Parse()
	if err := opt.fill(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	results, err := run(ctx, opt, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	if opt.json {
		err = printJSON(os.Stdout, results)
	} else {
		err = printTable(os.Stdout, opt, results)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// fill sets the flags left at zero to the server's defaults and checks
// the rest.
func (o *options) fill() error {
	srv, ok := servers[o.server]
	if !ok {
		return fmt.Errorf("-server must be one of %s, got %q", strings.Join(serverNames, ", "), o.server)
	}
	if o.limit == 0 {
		o.limit = srv.limit
	}
	if o.window == 0 {
		o.window = srv.window
	}
	if o.burst == 0 {
		o.burst = srv.burst
	}
	if o.calls == 0 {
		o.calls = srv.calls
	}
	if o.limit <= 0 || o.window <= 0 || o.calls <= 0 || o.workers <= 0 || o.burst < 0 {
		return errors.New("-limit, -window, -calls and -workers must be positive, -burst not negative")
	}
	return nil
}

// run starts the server, runs the three clients side by side and returns
// what the server saw of each. Live progress goes to progress.
func run(ctx context.Context, opt options, progress io.Writer) ([]result, error) {
	cfg := servers[opt.server].config(opt)
	cfg.LatencyMin, cfg.LatencyMax, cfg.Seed = opt.latency.min, opt.latency.max, opt.seed
	srv := throttleserver.New(cfg)
	url, err := srv.Start()
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	clients, err := newClients(opt)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "server %s: %s; latency %v\n",
		url, servers[opt.server].describe(opt), &opt.latency)
	fmt.Fprintf(progress, "%d clients side by side, %d calls each, %d workers each\n",
		len(clients), opt.calls, opt.workers)

	// The clients run at the same time, each under its own API key. The
	// server keeps a separate quota per key, so they cannot take calls from
	// one another, and they share the machine's CPU and the server's
	// latency equally: run one after the other, a later client would meet a
	// warmer (or more tired) machine.
	start := time.Now()
	stopProgress := reportProgress(progress, srv, clients, opt.calls, start)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.run(ctx, url, servers[opt.server].plan, opt.calls, opt.workers) })
	}
	wg.Wait()
	stopProgress()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted: %w", err)
	}

	ideal := idealWall(opt)
	results := make([]result, 0, len(clients))
	for _, c := range clients {
		results = append(results, newResult(c, srv.Stats(c.name), start, ideal))
	}
	return results, nil
}

// newClients builds the three clients of the comparison. Each gets its own
// connection pool with room for all its workers, so that none of them pays
// for opening connections the others keep.
func newClients(opt options) ([]*client, error) {
	base := func() http.RoundTripper {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = opt.workers
		return t
	}

	// (1) No limiter: send as fast as the workers can, and when the server
	// refuses a call, sleep for the wait it names and try again.
	none := &client{
		name:    "none",
		http:    &http.Client{Transport: base()},
		retries: naiveRetries,
	}

	// (2) x/time/rate with burst = limit: a token bucket refilling at n per
	// w. Every attempt, retries too, waits for as many tokens as it costs.
	bucket := rate.NewLimiter(rate.Every(opt.window/time.Duration(opt.limit)), opt.limit)
	tokenBucket := &client{
		name:    "x/time/rate",
		http:    &http.Client{Transport: base()},
		pace:    bucket.WaitN,
		retries: naiveRetries,
	}

	// (3) This library: the limiter sits in the http.Client's Transport,
	// which waits for a slot before each request and handles a refusal by
	// itself (pausing until the server's wait, then retrying), so the
	// calling code is a plain client.Do.
	tr, err := servers[opt.server].newLimiterTransport(opt, base())
	if err != nil {
		return nil, err
	}
	sliding := &client{
		name: "limiter",
		http: &http.Client{Transport: tr},
	}

	return []*client{none, tokenBucket, sliding}, nil
}

// naiveRetries is how often the hand-written clients retry a 429.
const naiveRetries = 3

// client is one column of the comparison: a way of making the calls.
type client struct {
	name    string // also its API key, so each client has its own quota
	http    *http.Client
	pace    func(ctx context.Context, n int) error // if set, called before every attempt with its cost
	retries int                                    // refusals retried after the server's wait by the caller's own loop

	done   atomic.Int64 // calls finished, successfully or not
	failed atomic.Int64 // calls that did not end in 200
	end    time.Time    // when the last call finished; set by run
}

// run makes the calls of plan, numbered 0 to calls-1, to url with workers
// goroutines and returns when all are done (or ctx is cancelled).
func (c *client) run(ctx context.Context, url string, plan func(int) call, calls, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(calls); i = next.Add(1) {
				if err := c.call(ctx, url, plan(int(i-1))); err != nil {
					c.failed.Add(1)
				}
				c.done.Add(1)
			}
		})
	}
	wg.Wait()
	c.end = time.Now()
}

// call makes one API call, retrying a refusal (429, or GitHub's 403) after
// the server's wait up to c.retries times.
func (c *client) call(ctx context.Context, url string, cl call) error {
	for attempt := 0; ; attempt++ {
		if c.pace != nil {
			if err := c.pace(ctx, cl.cost()); err != nil {
				return err
			}
		}
		req, err := cl.request(url)
		if err != nil {
			return err
		}
		req = req.WithContext(ctx)
		req.Header.Set(throttleserver.DefaultKeyHeader, c.name)
		resp, err := c.http.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body) // read it all, so the connection is reused
		resp.Body.Close()

		refused := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusForbidden
		switch {
		case resp.StatusCode == http.StatusOK:
			return nil
		case refused && attempt < c.retries:
			if err := sleep(ctx, serverWait(resp)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s", resp.Status)
		}
	}
}

// serverWait reads the wait a refusal names, as a careful hand-written
// client would: Retry-After in seconds, else GitHub's X-RateLimit-Reset
// (Unix seconds); without either, it guesses one second.
func serverWait(resp *http.Response) time.Duration {
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if reset, err := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64); err == nil {
		return max(time.Until(time.Unix(reset, 0)), 0)
	}
	return time.Second
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reportProgress writes one line per second with each client's calls done
// and the 429s the server sent it so far, until the returned stop is called.
func reportProgress(w io.Writer, srv *throttleserver.Server, clients []*client, calls int, start time.Time) (stop func()) {
	line := func() {
		var b strings.Builder
		fmt.Fprintf(&b, "%5.0fs", time.Since(start).Seconds())
		for _, c := range clients {
			_, throttled := srv.Counts(c.name)
			fmt.Fprintf(&b, "   %s %*d/%d %4d refused", c.name, len(strconv.Itoa(calls)), c.done.Load(), calls, throttled)
		}
		fmt.Fprintln(w, b.String())
	}
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				line()
			case <-quit:
				line()
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-finished
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// latencyRange is the -latency flag: "5ms-50ms", or "20ms" for a fixed latency.
type latencyRange struct{ min, max time.Duration }

func (r *latencyRange) String() string {
	if r.min == r.max {
		return r.min.String()
	}
	return r.min.String() + "-" + r.max.String()
}

func (r *latencyRange) Set(s string) error {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	from, err1 := time.ParseDuration(strings.TrimSpace(lo))
	to, err2 := time.ParseDuration(strings.TrimSpace(hi))
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if from < 0 || to < from {
		return fmt.Errorf("want MIN-MAX with 0 <= MIN <= MAX, got %q", s)
	}
	r.min, r.max = from, to
	return nil
}
