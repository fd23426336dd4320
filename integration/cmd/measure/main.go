// Command measure prints, as a Markdown table for the README, what the
// limiter's Transport does against the servers and under the clients of
// issue 8: server calls, throttled responses and wall time, measured on
// the real clock against real nginx (limit_req), go-chi/httprate, the
// repository's GitHub-style server, and under real azcore and
// go-retryablehttp.
//
//	go run ./integration/cmd/measure            # about a minute
//	go run ./integration/cmd/measure -runs 3    # each row three times, every run shown
//	go run ./integration/cmd/measure -only nginx  # the rows against nginx only
//
// Without nginx installed its rows say so. Each row uses a fresh limiter
// set up as a newcomer would (the server's advertised quota as a window),
// unless the row says otherwise.
//
// Where a row has a fastest possible wall time, each run shows its ratio to
// it, and the last line says how many runs met issue 8's target (within
// 1.5x). That target is reported here and not asserted by the tests: it is
// real time, which a loaded machine stretches; measure on a quiet one.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/apiquota/limiter"
	"github.com/apiquota/limiter/integration"
	"github.com/apiquota/limiter/internal/throttleserver"
)

// row is one line of the table.
type row struct {
	against string
	setup   string
	run     func(ctx context.Context) (result, error)
	target  bool // issue 8's 1.5x target applies (nginx and httprate)
}

// result is one run of a row.
type result struct {
	calls     int           // requests that reached the server
	throttled int           // of them, refused
	later     int           // refused after the first window, -1: not applicable
	failed    int           // calls the caller saw fail
	wall      time.Duration // the whole job
	fastest   time.Duration // the fastest the server allows, 0: not applicable
	note      string
}

func main() {
	runs := flag.Int("runs", 1, "runs of each row")
	only := flag.String("only", "", "run only the rows whose server names this (e.g. nginx)")
	flag.Parse()
	ctx := context.Background()
	var target verdict
	fmt.Printf("| against | setup | server calls | throttled (after the first window) | failed | wall time (fastest possible, ratio; target <= %.1fx) |\n", targetRatio)
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows() {
		if !strings.Contains(r.against, *only) {
			continue
		}
		var cells [4][]string
		var note string
		for range *runs {
			res, err := r.run(ctx)
			if err != nil {
				note = err.Error()
				break
			}
			cells[0] = append(cells[0], fmt.Sprint(res.calls))
			later := ""
			if res.later >= 0 {
				later = fmt.Sprintf(" (%d)", res.later)
			}
			cells[1] = append(cells[1], fmt.Sprintf("%d%s", res.throttled, later))
			cells[2] = append(cells[2], fmt.Sprint(res.failed))
			cells[3] = append(cells[3], wallCell(res, r.target, &target))
			note = res.note
		}
		if note != "" {
			note = "; " + note
		}
		fmt.Printf("| %s | %s%s | %s | %s | %s | %s |\n", r.against, r.setup, note,
			strings.Join(cells[0], ", "), strings.Join(cells[1], ", "),
			strings.Join(cells[2], ", "), strings.Join(cells[3], ", "))
	}
	fmt.Printf("\nissue 8's target, a wall time within %.1fx of the fastest the server allows: met by %d of %d runs against nginx and httprate%s\n",
		targetRatio, target.met, target.runs, target.missed())
}

// targetRatio is issue 8's target: a job takes at most this many times
// the fastest the server allows. The tests bound the wall time only
// loosely (a loaded machine stretches it); this program reports the target.
const targetRatio = 1.5

// verdict counts the runs that met targetRatio.
type verdict struct {
	runs, met int
	misses    []string
}

func (v verdict) missed() string {
	if len(v.misses) == 0 {
		return ""
	}
	return "; missed: " + strings.Join(v.misses, ", ")
}

// wallCell formats a run's wall time, with the fastest and their ratio
// when the row has a fastest, and counts the run in v when the target
// applies to the row.
func wallCell(res result, target bool, v *verdict) string {
	wall := fmt.Sprintf("%.2f s", res.wall.Seconds())
	if res.fastest <= 0 {
		return wall
	}
	ratio := res.wall.Seconds() / res.fastest.Seconds()
	if !target {
		return fmt.Sprintf("%s (%.2f s, %.2fx)", wall, res.fastest.Seconds(), ratio)
	}
	v.runs++
	mark := ""
	if ratio <= targetRatio {
		v.met++
	} else {
		mark = " over"
		v.misses = append(v.misses, fmt.Sprintf("%.2fx", ratio))
	}
	return fmt.Sprintf("%s (%.2f s, %.2fx%s)", wall, res.fastest.Seconds(), ratio, mark)
}

// naiveJob runs calls through a Transport over New(limit, window), as a
// newcomer sets it up, and counts what reached the server.
func naiveJob(ctx context.Context, url, key string, calls, workers, limit int, window, fastest time.Duration) (result, error) {
	l, err := limiter.New(limit, window)
	if err != nil {
		return result{}, err
	}
	base := &http.Transport{MaxIdleConnsPerHost: workers}
	defer base.CloseIdleConnections()
	counter := integration.NewCounter(base)
	client := &http.Client{Transport: limiter.NewTransport(counter, l)}
	res := integration.Run(ctx, client, counter, integration.Job{URL: url, Key: key, Calls: calls, Workers: workers})
	out := result{calls: len(res.Attempts), failed: res.Failed, wall: res.Wall, fastest: fastest,
		throttled: res.Throttled(http.StatusTooManyRequests, http.StatusForbidden),
		later:     res.ThrottledAfter(window, http.StatusTooManyRequests, http.StatusForbidden)}
	if len(res.Errors) > 0 {
		out.note = "errors: " + strings.Join(res.Errors, "; ")
	}
	return out, nil
}

var runID int

// key returns a fresh API key, so that every run has its own quota.
func key() string {
	runID++
	return fmt.Sprintf("run-%d", runID)
}

func rows() []row {
	var out []row
	out = append(out, serverRows()...)
	out = append(out, clientRows()...)
	return out
}

func serverRows() []row {
	nginx := func(workers int) row {
		return row{
			against: "nginx `limit_req` rate=10r/s burst=5 nodelay",
			setup:   fmt.Sprintf("New(10, time.Second); 40 calls, %d workers", workers),
			target:  true,
			run: func(ctx context.Context) (result, error) {
				ng, err := integration.StartNginx(integration.NginxLimit{Rate: 10, Burst: 5})
				if err != nil {
					return result{}, err
				}
				defer ng.Stop()
				return naiveJob(ctx, ng.URL+"/api/items", key(), 40, workers, 10, time.Second, 3400*time.Millisecond)
			},
		}
	}
	httprate := func(workers int) row {
		return row{
			against: "go-chi/httprate 10 per second",
			setup:   fmt.Sprintf("New(10, time.Second); 40 calls, %d workers", workers),
			target:  true,
			run: func(ctx context.Context) (result, error) {
				h, origin := integration.HTTPRate(10, time.Second)
				srv := httptest.NewServer(h)
				defer srv.Close()
				fastest := integration.HTTPRateFastest(origin, time.Now(), 40, 10, time.Second)
				return naiveJob(ctx, srv.URL+"/api/items", key(), 40, workers, 10, time.Second, fastest)
			},
		}
	}
	github := func(against, setup string, cfg throttleserver.Config, limit int, window time.Duration, calls, workers int, fastest time.Duration) row {
		return row{against: against, setup: setup, run: func(ctx context.Context) (result, error) {
			cfg.Mode = throttleserver.ModeGitHub
			srv := throttleserver.New(cfg)
			url, err := srv.Start()
			if err != nil {
				return result{}, err
			}
			defer srv.Close()
			return naiveJob(ctx, url+"/repos/o/r", key(), calls, workers, limit, window, fastest)
		}}
	}
	skewed := func() time.Time { return time.Now().Add(-2 * time.Second) }
	return []row{
		nginx(4), nginx(16), httprate(4), httprate(16),
		github("GitHub-style primary limit (10 per 2 s fixed window, `X-RateLimit-*`, 403 when spent)",
			"New(10, 2*time.Second); 40 calls, 4 workers; fastest 8 to 9 s: 3 resets, each 2 s after a window opens rounded up to a whole second, so a window that opens just after a reset lasts 3 s",
			throttleserver.Config{Limit: 10, Window: 2 * time.Second}, 10, 2*time.Second, 40, 4, 0),
		github("GitHub's secondary limit (5 per second, 403 + `Retry-After`)",
			"New(100, time.Minute); 20 calls, 4 workers",
			throttleserver.Config{Limit: 5000, Window: time.Hour, SecondaryLimit: 5, SecondaryWindow: time.Second}, 100, time.Minute, 20, 4, 3*time.Second),
		github("the primary limit with the server's clock 2 s behind",
			"the same",
			throttleserver.Config{Limit: 10, Window: 2 * time.Second, Now: skewed}, 10, 2*time.Second, 40, 4, 0),
	}
}
