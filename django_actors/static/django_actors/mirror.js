/*
 * django_actors admin: keep live parts of a page fresh without a reload.
 *
 * Every couple of seconds, fetch an HTML fragment rendered by the server and
 * swap it in. No library. Polling pauses while the tab is hidden, slows down
 * after an error, and stops once nothing on the page is still running.
 *
 *   [data-da-refresh="<url>"]        its content is replaced by the fragment
 *                                    (composition page, dashboard); polling
 *                                    goes on while the fragment holds
 *                                    data-da-live="1".
 *   [data-da-progress-url="<url>"]   on the composition list: the progress
 *                                    bars still running (.da-progress with
 *                                    data-live="1") are fetched by id and
 *                                    replaced one by one.
 */
(function () {
    "use strict";

    var DEFAULT_PERIOD = 2000;

    function fetchHtml(url) {
        return fetch(url, {
            credentials: "same-origin",
            headers: {"X-Requested-With": "XMLHttpRequest"}
        }).then(function (response) {
            if (!response.ok) {
                throw new Error("HTTP " + response.status);
            }
            return response.text();
        });
    }

    function parse(html) {
        var template = document.createElement("template");
        template.innerHTML = html;
        return template.content;
    }

    function periodOf(element) {
        return parseInt(element.getAttribute("data-da-period"), 10) || DEFAULT_PERIOD;
    }

    // Call tick() every period ms while it resolves to true.
    function every(period, tick) {
        function loop() {
            if (document.hidden) {
                setTimeout(loop, period);
                return;
            }
            tick().then(function (more) {
                if (more) {
                    setTimeout(loop, period);
                }
            }, function () {
                setTimeout(loop, period * 5);
            });
        }
        setTimeout(loop, period);
    }

    function isLive(root) {
        var state = root.querySelector("[data-da-live]");
        return state === null || state.getAttribute("data-da-live") === "1";
    }

    function refreshContainer(container) {
        var url = container.getAttribute("data-da-refresh");
        if (!url || !isLive(container)) {
            return;
        }
        every(periodOf(container), function () {
            return fetchHtml(url).then(function (html) {
                // Keep the tracebacks the user opened or closed as they were.
                var opened = {};
                container.querySelectorAll("details[data-da-key]").forEach(function (details) {
                    opened[details.getAttribute("data-da-key")] = details.open;
                });
                container.replaceChildren(parse(html));
                container.querySelectorAll("details[data-da-key]").forEach(function (details) {
                    var key = details.getAttribute("data-da-key");
                    if (Object.prototype.hasOwnProperty.call(opened, key)) {
                        details.open = opened[key];
                    }
                });
                return isLive(container);
            });
        });
    }

    function liveBars() {
        return Array.prototype.slice.call(document.querySelectorAll('.da-progress[data-live="1"]'));
    }

    function refreshBars(source) {
        var url = source.getAttribute("data-da-progress-url");
        if (!url || liveBars().length === 0) {
            return;
        }
        every(periodOf(source), function () {
            var ids = liveBars().map(function (bar) {
                return "id=" + encodeURIComponent(bar.getAttribute("data-composition"));
            });
            if (ids.length === 0) {
                return Promise.resolve(false);
            }
            return fetchHtml(url + "?" + ids.join("&")).then(function (html) {
                var fresh = {};
                parse(html).querySelectorAll(".da-progress").forEach(function (bar) {
                    fresh[bar.getAttribute("data-composition")] = bar;
                });
                liveBars().forEach(function (bar) {
                    var replacement = fresh[bar.getAttribute("data-composition")];
                    if (replacement) {
                        bar.replaceWith(replacement.cloneNode(true));
                    }
                });
                return liveBars().length > 0;
            });
        });
    }

    function start() {
        document.querySelectorAll("[data-da-refresh]").forEach(refreshContainer);
        document.querySelectorAll("[data-da-progress-url]").forEach(refreshBars);
    }

    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start);
    } else {
        start();
    }
}());
