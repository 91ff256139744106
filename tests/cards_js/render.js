#!/usr/bin/env node
// Renders Adaptive Cards with the official renderer (npm `adaptivecards`) into a DOM (jsdom)
// and reports what each TextBlock shows, line by line, as a browser lays it out.
//
// stdin:  a JSON array of cards.
// stdout: one JSON line per card, in order:
//   {"index": i,
//    "blocks": [{path, lines, tags, color, subtle, spacing}]  every rendered TextBlock, in document
//               order: `path` is its place in the card's JSON ($.body[3].items[0]), `lines`
//               the lines it shows (see `visibleLines`), `tags` the HTML elements inside it
//               (["p"] for plain text; "a", "strong", "li", ... would be markup),
//               `color`, `subtle` and `spacing` (above the block) as the renderer read them}
//
// The renderer's markdown processor is markdown-it (what AdaptiveCard.applyMarkdown calls),
// plugged in through AdaptiveCard.onProcessMarkdown. The bundle runs inside the jsdom window
// (the UMD bundle expects browser globals such as HTMLElement).
//
// Lines: jsdom does no layout, so the lines are computed from the DOM as CSS (white-space:
// normal) would show them: runs of spaces, tabs and newlines collapse to one space and
// vanish at a line's start and end, no-break spaces stay; <br> ends a line; a block element
// (p, div, li, ...) starts a new line, and two paragraphs in a row are separated by an empty
// line unless their margins were set to 0 (the browser's default margin of a <p> is 1em,
// as tall as a line: this is how a host shows "\n\n" inside one TextBlock).
"use strict";

const fs = require("fs");
const path = require("path");
const { JSDOM } = require("jsdom");
const MarkdownIt = require("markdown-it");

const BUNDLE = require.resolve("adaptivecards/dist/adaptivecards.js");
const BLOCK = new Set(["P", "DIV", "LI", "UL", "OL", "BLOCKQUOTE", "PRE", "H1", "H2", "H3", "H4", "H5", "H6", "TABLE",
  "TR", "HR"]);
const ID_PREFIX = "cs-path:";

function markPaths(node, where) {
  // The same card with each TextBlock's JSON path as its id, so rendered elements can be
  // told apart (ids are rendered as the element's id attribute; they change nothing else).
  if (Array.isArray(node)) {
    return node.map((item, i) => markPaths(item, `${where}[${i}]`));
  }
  if (node === null || typeof node !== "object") {
    return node;
  }
  const copy = {};
  for (const [key, value] of Object.entries(node)) {
    copy[key] = value !== null && typeof value === "object" ? markPaths(value, `${where}.${key}`) : value;
  }
  if (copy.type === "TextBlock") {
    copy.id = ID_PREFIX + where;
  }
  return copy;
}

function zeroMargin(value) {
  return value === "0px" || value === "0";
}

function visibleLines(element) {
  const lines = [];
  let current = "";
  let open = false; // something visible, or a <br>, was put on the current line
  let previousBlock = null;

  function endLine() {
    if (open) {
      lines.push(current.replace(/^ +| +$/g, ""));
    }
    current = "";
    open = false;
  }

  function walk(node) {
    if (node.nodeType === 3) { // text
      current += node.nodeValue.replace(/[ \t\n\r\f]+/g, " ");
      if (/[^ \t\n\r\f]/.test(node.nodeValue)) {
        open = true; // collapsible whitespace alone makes no line
      }
      return;
    }
    if (node.nodeType !== 1) {
      return;
    }
    if (node.tagName === "BR") {
      open = true; // a <br> ends a line, even an empty one
      endLine();
      return;
    }
    const block = BLOCK.has(node.tagName);
    if (block) {
      endLine();
      if (previousBlock && previousBlock.tagName === "P" && node.tagName === "P"
          && !(zeroMargin(previousBlock.style.marginBottom) && zeroMargin(node.style.marginTop))) {
        lines.push(""); // the paragraphs' margin: one empty line's height
      }
    }
    for (const child of Array.from(node.childNodes)) {
      walk(child);
    }
    if (block) {
      endLine();
      previousBlock = node;
    }
  }

  for (const child of Array.from(element.childNodes)) {
    walk(child);
  }
  endLine();
  return lines;
}

function tagsIn(element) {
  return Array.from(new Set(Array.from(element.querySelectorAll("*")).map((e) => e.tagName.toLowerCase()))).sort();
}

function render(window, json, index) {
  const AC = window.AdaptiveCards;
  const card = new AC.AdaptiveCard();
  const context = new AC.SerializationContext();
  context.targetVersion = AC.Versions.v1_5;
  card.parse(markPaths(json, "$"), context);
  const element = card.render();
  const host = window.document.createElement("div");
  host.appendChild(element);
  window.document.body.appendChild(host);
  const blocks = [];
  for (const rendered of Array.from(host.querySelectorAll(`[id^="${ID_PREFIX}"]`))) {
    const where = rendered.id.slice(ID_PREFIX.length);
    const source = card.getElementById(rendered.id);
    blocks.push({
      path: where,
      lines: visibleLines(rendered),
      tags: tagsIn(rendered),
      color: source && source.color !== undefined ? AC.TextColor[source.color] : null,
      subtle: source ? Boolean(source.isSubtle) : null,
      spacing: source ? AC.Spacing[source.spacing] : null,
    });
  }
  host.remove();
  return { index, blocks };
}

function main() {
  const dom = new JSDOM("<!doctype html><html><body></body></html>", { runScripts: "outside-only" });
  const window = dom.window;
  window.eval(fs.readFileSync(BUNDLE, "utf8"));
  const markdown = new MarkdownIt();
  window.AdaptiveCards.AdaptiveCard.onProcessMarkdown = (text, result) => {
    result.outputHtml = markdown.render(text);
    result.didProcess = true;
  };
  const cards = JSON.parse(fs.readFileSync(0, "utf8"));
  if (!Array.isArray(cards)) {
    throw new Error("stdin must be a JSON array of cards");
  }
  const out = cards.map((json, index) => JSON.stringify(render(window, json, index)));
  process.stdout.write(out.join("\n") + "\n");
}

if (require.main === module) {
  process.chdir(path.dirname(__filename));
  main();
}
