// Command defender is a client of Microsoft's Defender APIs as one would
// copy it: one http.Client whose Transport keeps every quota the API
// publishes, and keeps it across restarts.
//
//   - The tenant's rule, per tenant and app: 100 calls per minute and 1,500
//     per hour: limiter.New(100, time.Minute, limiter.WithWindow(1500, time.Hour)).
//   - Advanced hunting has its own 45 per minute, on top: a Route for
//     "POST /api/advancedqueries/run". Its queries wait for their route
//     without holding back the other calls.
//   - A $batch is charged per inner request: Transport.Cost weighs it.
//   - A 429 whose wait is in the JSON body, not in Retry-After: a
//     Transport.Classify hook reads it.
//   - A command-line job restarts with empty limiters and would send the
//     burst that the server refuses: the state of the Transport's limiters,
//     the tenant rule's and each route's, is saved to a file on exit
//     (Transport.MarshalBinary) and restored on start (UnmarshalBinary).
//
// Without -url it runs against a local stand-in of the API on 127.0.0.1
// (internal/throttleserver with Defender's quotas, a minute scaled to
// -minute), and runs -sessions sessions one after the other, as a job
// started again and again, each restoring what the last one saved. Each
// session prints the calls it made and the 429s the server sent it.
//
// Usage:
//
//	go run ./examples/defender                     # 2 sessions of 150 calls, a minute scaled to 1 s: about 4 s
//	go run ./examples/defender -state ""           # the same without saving the state: the second session earns 429s
//	go run ./examples/defender -minute 1m -calls 120   # the real quotas (about 2 minutes)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/apiquota/limiter/internal/throttleserver"
)

// options are the command-line flags.
type options struct {
	url      string        // the API; "" starts a local stand-in
	state    string        // the Transport's state file; "" keeps none
	minute   time.Duration // the quotas' minute
	calls    int           // calls per session
	sessions int
	workers  int
}

func main() {
	var opt options
	flag.StringVar(&opt.url, "url", "", "base URL of the API; empty: a local stand-in with Defender's quotas")
	flag.StringVar(&opt.state, "state", filepath.Join(os.TempDir(), "defender-transport.state"), "file that keeps the Transport's state (tenant rule and routes) between runs; empty: none")
	flag.DurationVar(&opt.minute, "minute", time.Second, "the quotas' minute (time.Minute against the real API)")
	flag.IntVar(&opt.calls, "calls", 150, "calls per session")
	flag.IntVar(&opt.sessions, "sessions", 2, "sessions, one after the other, as restarts of the job")
	flag.IntVar(&opt.workers, "workers", 8, "concurrent calls")
	flag.Parse()
	if opt.minute <= 0 || opt.calls <= 0 || opt.sessions <= 0 || opt.workers <= 0 {
		fmt.Fprintln(os.Stderr, "defender: -minute, -calls, -sessions and -workers must be positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, opt, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "defender:", err)
		os.Exit(1)
	}
}

// run starts the stand-in unless opt.url names an API, then runs the
// sessions, each a fresh client as after a restart.
func run(ctx context.Context, opt options, out io.Writer) error {
	var srv *throttleserver.Server
	if opt.url == "" {
		cfg := throttleserver.Defender(opt.minute)
		cfg.WaitInBody = true
		cfg.LatencyMin, cfg.LatencyMax = time.Millisecond, 5*time.Millisecond
		srv = throttleserver.New(cfg)
		url, err := srv.Start()
		if err != nil {
			return err
		}
		defer srv.Close()
		opt.url = url
		fmt.Fprintf(out, "local stand-in %s: 100 calls per %v and 1500 per %v, advanced hunting 45 per %v, $batch charged per inner request\n",
			url, opt.minute, 60*opt.minute, opt.minute)
	}
	for i := 1; i <= opt.sessions; i++ {
		var before int
		if srv != nil {
			_, before = srv.Counts(throttleserver.DefaultKey)
		}
		s, err := session(ctx, opt)
		if err != nil {
			return fmt.Errorf("session %d: %w", i, err)
		}
		fmt.Fprintf(out, "session %d: %s", i, s)
		if srv != nil {
			_, after := srv.Counts(throttleserver.DefaultKey)
			fmt.Fprintf(out, ", %d x 429 from the server", after-before)
		}
		fmt.Fprintln(out)
	}
	return nil
}

// summary is what one session did.
type summary struct {
	calls, cost, failed int
	wall                time.Duration
	restored, saved     bool
}

func (s summary) String() string {
	str := fmt.Sprintf("%d calls (charged %d) in %v, %d failed", s.calls, s.cost, s.wall.Round(10*time.Millisecond), s.failed)
	if s.restored {
		str += "; restored the state"
	}
	if s.saved {
		str += "; saved it"
	}
	return str
}

// session is one run of the job: build the client, restore the state,
// make the calls, save the state.
func session(ctx context.Context, opt options) (summary, error) {
	client, t, err := newClient(nil, opt.minute)
	if err != nil {
		return summary{}, err
	}
	var s summary
	if opt.state != "" {
		if s.restored, err = restore(t, opt.state); err != nil {
			return s, err
		}
	}
	start := time.Now()
	s.calls, s.cost, s.failed = work(ctx, client, opt.url, opt.calls, opt.workers)
	s.wall = time.Since(start)
	if opt.state != "" {
		if err := save(t, opt.state); err != nil {
			return s, err
		}
		s.saved = true
	}
	return s, ctx.Err()
}
