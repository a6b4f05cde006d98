"""`sdpo_kit.render`: the one block renderer of report, verdict and cards, markdown and HTML."""

from sdpo_kit.render import CSS, page, to_html, to_markdown


def test_data_is_escaped_and_template_backticks_are_code():
    blocks = [("h2", "run <b>"), ("p", "base model `{}`, seed {}", "a|b<script>", 3)]
    assert to_markdown(blocks) == "## run &lt;b&gt;\n\nbase model `a\\|b&lt;script&gt;`, seed 3\n"
    assert to_html(blocks) == ["<h2>run &lt;b&gt;</h2>", "<p>base model <code>a|b&lt;script&gt;</code>, seed 3</p>"]


def test_a_slot_in_data_or_in_a_template_without_data_stays_text():
    assert to_markdown([("p", "{} and {}", "x {} y", "`z`")]) == "x {} y and \\`z\\`\n"
    assert to_markdown([("p", "set {} literally")]) == "set {} literally\n"
    assert to_html([("p", "set {} literally")]) == ["<p>set {} literally</p>"]


def test_verdict_kinds_tables_lists_code_images():
    blocks = [("call", "a vs b: a ahead. [n = 4 pairs]"), ("alert", "Only 4 pairs (< 100)"),
              ("table", ["k", "v"], [["x|y", "1"]]), ("list", [("`{}`: {}", "too_long", 2)]),
              ("code", "json", '{"a": 1}'), ("image", "hist", "plots/h.png"), ("warn", "careful {}", "<i>")]
    assert to_markdown(blocks) == (
        "**a vs b: a ahead. [n = 4 pairs]**\n\n⚠ Only 4 pairs (&lt; 100)\n\n| k | v |\n|---|---|\n| x\\|y | 1 |\n\n"
        "- `too_long`: 2\n\n```json\n{\"a\": 1}\n```\n\n![hist](plots/h.png)\n\n**careful &lt;i&gt;**\n")
    html = to_html(blocks)
    assert html[0] == "<p class='call'>a vs b: a ahead. <span class='detail'>[n = 4 pairs]</span></p>"
    assert html[1] == "<p class='warn'>⚠ Only 4 pairs (&lt; 100)</p>"
    assert html[2] == "<table><tr><th>k</th><th>v</th></tr><tr><td>x|y</td><td>1</td></tr></table>"
    assert html[3] == "<ul><li><code>too_long</code>: 2</li></ul>"
    assert html[4] == "<pre><code>{&quot;a&quot;: 1}</code></pre>"
    assert html[6] == "<p class='note'><strong>careful &lt;i&gt;</strong></p>"
    assert to_markdown([]) == "" and to_html([]) == []
    # A call or alert carries run names (issue 22): a newline, markup or bidi override in one stays text.
    evil = [("call", "a\n# x <img src=y> vs b\u202e: `b` ahead. [n = 4]"), ("alert", "r\u200bun|x: dropped")]
    assert to_markdown(evil) == "**a # x &lt;img src=y&gt; vs b\\\\u202e: `b` ahead. [n = 4]**\n\n⚠ r\\\\u200bun\\|x: dropped\n"
    assert to_html(evil) == ["<p class='call'>a # x &lt;img src=y&gt; vs b\\u202e: `b` ahead. "
                             "<span class='detail'>[n = 4]</span></p>", "<p class='warn'>⚠ r\\u200bun|x: dropped</p>"]


def test_page_has_the_one_stylesheet_once():
    html = page("t <x>", ["<section>a</section>"])
    assert html.count("<style>") == 1 and CSS in html and ".verdict" in CSS and ".note" in CSS
    assert "<title>t &lt;x&gt;</title>" in html and html.endswith("<section>a</section></body></html>")
