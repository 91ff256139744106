#!/usr/bin/env node
// Checks Adaptive Cards with the official renderer package (npm `adaptivecards`).
//
// stdin:  a JSON array of cards.
// stdout: one JSON line per card, in order:
//   {"index": i,
//    "parse":      [{event, phase, message, source}]  events collected while parsing
//                                                     with targetVersion 1.5 (unknown
//                                                     types, invalid values, ...),
//    "validation": [{event, phase, message, source}]  card.validateProperties() failures
//                                                     (duplicate ids, inputs without label
//                                                     or error message, ...),
//    "markdown":   [{path, text, html, htmlLinkify}]  every TextBlock text and Fact
//                                                     title/value rendered by markdown-it,
//                                                     the processor the renderer uses;
//                                                     htmlLinkify: the same with bare URLs
//                                                     turned into links, as Teams does.
//    "version":    the card version the renderer read}
// Exit status 0 unless the input cannot be read; the caller judges the results.
"use strict";

const AC = require("adaptivecards/dist/adaptivecards.js"); // UMD bundle; lib/ is ESM only
const MarkdownIt = require("markdown-it");

const markdown = new MarkdownIt(); // what AdaptiveCard.applyMarkdown calls: markdownit().render(text)
const markdownLinkify = new MarkdownIt({ linkify: true });

function describe(event) {
  return {
    event: AC.ValidationEvent[event.event] || String(event.event),
    phase: AC.ValidationPhase[event.phase] || String(event.phase),
    message: event.message,
    source: event.source && typeof event.source.getJsonTypeName === "function" ? event.source.getJsonTypeName() : null,
  };
}

function collectTexts(node, path, out) {
  if (Array.isArray(node)) {
    node.forEach((item, i) => collectTexts(item, `${path}[${i}]`, out));
    return;
  }
  if (node === null || typeof node !== "object") {
    return;
  }
  if (node.type === "TextBlock" && typeof node.text === "string") {
    out.push({ path: `${path}.text`, text: node.text });
  }
  if (node.type === "FactSet" && Array.isArray(node.facts)) {
    node.facts.forEach((fact, i) => {
      out.push({ path: `${path}.facts[${i}].title`, text: String(fact.title) });
      out.push({ path: `${path}.facts[${i}].value`, text: String(fact.value) });
    });
  }
  for (const [key, value] of Object.entries(node)) {
    if (value !== null && typeof value === "object") {
      collectTexts(value, `${path}.${key}`, out);
    }
  }
}

function check(json, index) {
  const card = new AC.AdaptiveCard();
  const context = new AC.SerializationContext();
  context.targetVersion = AC.Versions.v1_5;
  card.parse(json, context);

  const parse = [];
  for (let i = 0; i < context.eventCount; i++) {
    parse.push(describe(context.getEventAt(i)));
  }
  const validation = card.validateProperties().validationEvents.map(describe);

  const texts = [];
  collectTexts(json, "$", texts);
  const rendered = texts.map(({ path, text }) => ({
    path,
    text,
    html: markdown.render(text),
    htmlLinkify: markdownLinkify.render(text),
  }));

  return {
    index,
    version: card.version ? card.version.toString() : null,
    parse,
    validation,
    markdown: rendered,
  };
}

function main() {
  const chunks = [];
  process.stdin.on("data", (chunk) => chunks.push(chunk));
  process.stdin.on("end", () => {
    const cards = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (!Array.isArray(cards)) {
      throw new Error("stdin must be a JSON array of cards");
    }
    const lines = cards.map((json, index) => JSON.stringify(check(json, index)));
    process.stdout.write(lines.join("\n") + "\n");
  });
}

main();
