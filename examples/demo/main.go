// Command demo shows what happens to three clients that make the same calls
// through a strict, rate-limited API:
//
//	none         a plain http.Client that retries a 429 after its Retry-After
//	x/time/rate  the same, pacing every attempt with rate.NewLimiter(rate.Every(w/n), n)
//	limiter      an http.Client whose Transport is limiter.NewTransport
//
// It starts a local API server on 127.0.0.1 (internal/throttleserver) that
// accepts at most n calls per API key in any sliding window of length w and
// answers 429 Too Many Requests with Retry-After beyond that, like the APIs
// this module was built for. The three clients run side by side, each with
// its own API key, several workers and a fixed number of calls. At the end it
// prints, from the server's own log, how many 429s each client earned, how
// long it took and how many calls landed in its busiest window.
//
// A token bucket with burst n lets n calls through at once and then keeps
// refilling while those n calls are still in the server's window, so it earns
// 429s. The sliding-window limiter admits a call exactly when the oldest one
// leaves the window: no 429, and close to the fastest wall time the quota
// allows.
//
// Usage:
//
//	go run ./examples/demo                 # 100 calls per 10 s, about 25 s
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

	"github.com/apiquota/limiter"
	"github.com/apiquota/limiter/internal/throttleserver"
)

// options are the command-line flags.
type options struct {
	limit        int
	window       time.Duration
	calls        int
	workers      int
	latency      latencyRange
	seed         uint64
	countRefused bool
	json         bool
}

func main() {
	opt := options{latency: latencyRange{5 * time.Millisecond, 50 * time.Millisecond}}
	flag.IntVar(&opt.limit, "limit", limiter.DefaultLimit, "calls the server accepts per window and API key")
	flag.DurationVar(&opt.window, "window", 10*time.Second, "length of the server's sliding window (60s is the real quota)")
	flag.IntVar(&opt.calls, "calls", 300, "calls each client makes")
	flag.IntVar(&opt.workers, "workers", 8, "concurrent workers per client")
	flag.Var(&opt.latency, "latency", "server latency per accepted call: a range MIN-MAX or a single duration")
	flag.Uint64Var(&opt.seed, "seed", 1, "seed of the server's random latency")
	flag.BoolVar(&opt.countRefused, "count-refused", true, "the server counts refused (429) calls against the quota, as many real APIs do")
	flag.BoolVar(&opt.json, "json", false, "print one JSON object per client instead of the table")
	flag.Parse()
	if opt.limit <= 0 || opt.window <= 0 || opt.calls <= 0 || opt.workers <= 0 {
		fmt.Fprintln(os.Stderr, "demo: -limit, -window, -calls and -workers must be positive")
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

// run starts the server, runs the three clients side by side and returns
// what the server saw of each. Live progress goes to progress.
func run(ctx context.Context, opt options, progress io.Writer) ([]result, error) {
	srv := throttleserver.New(throttleserver.Config{
		Limit:        opt.limit,
		Window:       opt.window,
		CountRefused: opt.countRefused,
		LatencyMin:   opt.latency.min,
		LatencyMax:   opt.latency.max,
		Seed:         opt.seed,
	})
	url, err := srv.Start()
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	clients, err := newClients(opt)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "server %s: %d calls per %v per API key, latency %v\n",
		url, opt.limit, opt.window, &opt.latency)
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
		wg.Go(func() { c.run(ctx, url, opt.calls, opt.workers) })
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
	// says 429, sleep for its Retry-After and try again.
	none := &client{
		name:    "none",
		http:    &http.Client{Transport: base()},
		retries: naiveRetries,
	}

	// (2) x/time/rate with burst = limit: a token bucket refilling at n per
	// w. Every attempt, retries too, waits for a token first.
	bucket := rate.NewLimiter(rate.Every(opt.window/time.Duration(opt.limit)), opt.limit)
	tokenBucket := &client{
		name:    "x/time/rate",
		http:    &http.Client{Transport: base()},
		pace:    bucket.Wait,
		retries: naiveRetries,
	}

	// (3) This library: the limiter sits in the http.Client's Transport,
	// which waits for a slot before each request and handles a 429 by
	// itself (pausing until Retry-After, then retrying), so the calling code
	// is a plain client.Do. NewTransport(nil, l) would use
	// http.DefaultTransport.
	l, err := limiter.New(opt.limit, opt.window)
	if err != nil {
		return nil, err
	}
	sliding := &client{
		name: "limiter",
		http: &http.Client{Transport: limiter.NewTransport(base(), l)},
	}

	return []*client{none, tokenBucket, sliding}, nil
}

// naiveRetries is how often the hand-written clients retry a 429.
const naiveRetries = 3

// client is one column of the comparison: a way of making the calls.
type client struct {
	name    string // also its API key, so each client has its own quota
	http    *http.Client
	pace    func(context.Context) error // if set, called before every attempt
	retries int                         // 429s retried after Retry-After by the caller's own loop

	done   atomic.Int64 // calls finished, successfully or not
	failed atomic.Int64 // calls that did not end in 200
	end    time.Time    // when the last call finished; set by run
}

// run makes calls requests to url with workers goroutines and returns when
// all are done (or ctx is cancelled).
func (c *client) run(ctx context.Context, url string, calls, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(calls) {
				if err := c.call(ctx, url); err != nil {
					c.failed.Add(1)
				}
				c.done.Add(1)
			}
		})
	}
	wg.Wait()
	c.end = time.Now()
}

// call makes one API call, retrying a 429 after the server's Retry-After up
// to c.retries times.
func (c *client) call(ctx context.Context, url string) error {
	for attempt := 0; ; attempt++ {
		if c.pace != nil {
			if err := c.pace(ctx); err != nil {
				return err
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/items", nil)
		if err != nil {
			return err
		}
		req.Header.Set(throttleserver.DefaultKeyHeader, c.name)
		resp, err := c.http.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body) // read it all, so the connection is reused
		resp.Body.Close()

		switch {
		case resp.StatusCode == http.StatusOK:
			return nil
		case resp.StatusCode == http.StatusTooManyRequests && attempt < c.retries:
			if err := sleep(ctx, retryAfter(resp)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s", resp.Status)
		}
	}
}

// retryAfter reads the delta-seconds form of Retry-After, the only one the
// demo server sends; without it, a client would guess, here one second.
func retryAfter(resp *http.Response) time.Duration {
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || secs < 0 {
		return time.Second
	}
	return time.Duration(secs) * time.Second
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
			fmt.Fprintf(&b, "   %s %*d/%d %4d×429", c.name, len(strconv.Itoa(calls)), c.done.Load(), calls, throttled)
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

// idealWall is the fastest any client could make opt.calls calls without a
// 429. Call j (counting from 0) cannot reach the server before
// floor(j/n)*w, so the calls of the last window start at floor((C-1)/n)*w at
// best, and the workers need ceil(r/workers) round trips of the mean latency
// to make the r calls of that window. Nor can the workers go faster than
// ceil(C/workers) round trips in all.
func idealWall(opt options) time.Duration {
	n, c, w := opt.limit, opt.calls, opt.workers
	windows := (c - 1) / n
	last := c - windows*n
	mean := (opt.latency.min + opt.latency.max) / 2
	quota := time.Duration(windows)*opt.window + time.Duration(ceilDiv(last, w))*mean
	workers := time.Duration(ceilDiv(c, w)) * mean
	return max(quota, workers)
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
