"""The built-in ``capabilities-v1`` taxonomy.

It covers every category named in the Gemma-2 / SimPO study's published shifts
(method.md), so its reference results map one to one; "technical (code and math)" is a
parent of code generation and math because the study reports it as an aggregate. The
study's own taxonomy and annotation prompt are unpublished: the descriptions below are
ours. The lexicons serve the offline rule labeller, a transparent baseline, not a
substitute for reading the examples.
"""

from __future__ import annotations

from sae_lens_crosscoder.labelling.taxonomy import Category, register_taxonomy

CAPABILITIES_V1 = (
    Category(
        "safety",
        "Safety and content moderation: refusing or softening harmful requests, warnings, policy language, "
        "harmful or sensitive topics (violence, weapons, drugs, self-harm, hate, illegal activity).",
        title="safety and content moderation",
        keywords=("refus", "cannot help", "can't help", "can't assist", "cannot assist", "harmful", "unsafe",
                  "illegal", "unethical", "dangerous", "violence", "weapon", "explosive", "drugs", "self-harm",
                  "suicide", "hate speech", "harassment", "inappropriate", "offensive", "policy", "guidelines",
                  "I'm sorry", "I am sorry", "not able to provide", "consent", "abuse"),
    ),
    Category(
        "multilingual",
        "Multilingual and linguistic processing: non-English text, translation, switching or matching languages, "
        "grammar, spelling, morphology, word-level language structure.",
        title="multilingual / linguistic processing",
        keywords=("translat", "language", "grammar", "spelling", "synonym", "pronounc", "in French", "in Spanish",
                  "in German", "en français", "en español", "bonjour", "merci", "gracias", "hola", "danke",
                  "vocabulary", "verb", "noun", "adjective"),
        patterns=(r"[àâçéèêëîïôûùüÿñæœßáíóú]", r"[\u0400-\u04ff\u0600-\u06ff\u0900-\u097f\u3040-\u30ff\u4e00-\u9fff]"),
    ),
    Category(
        "instruction_following",
        "Instruction following: tracking and executing the user's explicit request and its constraints "
        "(length, number of items, what to include or avoid), imperative task statements.",
        title="instruction following",
        keywords=("please", "write a", "write an", "make sure", "in exactly", "at most", "at least", "no more than",
                  "do not include", "don't include", "without using", "step by step", "as requested", "your task",
                  "instructions", "summarize", "summarise", "rewrite", "list ", "describe", "explain", "give me"),
        patterns=(r"\b(?:in|using) (?:\d+|one|two|three|four|five|ten) (?:words|sentences|paragraphs|bullet)",),
    ),
    Category(
        "template_following",
        "Template following: chat-template and turn structure (turn markers, role names, start/end of turn), "
        "formulaic openings and closings of assistant replies.",
        title="template following",
        keywords=("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "user\n", "model\n", "assistant",
                  "Sure, here", "Here is", "Here's", "Certainly", "I hope this helps", "Let me know if"),
        patterns=(r"<\|?(?:im_start|im_end|start_header_id|end_header_id|eot_id)\|?>", r"^\s*(?:user|model|assistant)\s*$"),
    ),
    Category(
        "factual_verification",
        "Factual verification: checking claims, citing sources or evidence, dates, numbers and named facts, "
        "correcting a false premise.",
        title="factual verification",
        keywords=("according to", "fact", "evidence", "source", "citation", "verify", "verified", "confirm",
                  "actually", "in fact", "correct", "incorrect", "true", "false", "research shows", "studies show",
                  "reported", "census", "founded in", "born in"),
        patterns=(r"\b1[5-9]\d\d\b|\b20[0-4]\d\b",),
    ),
    Category(
        "hallucination_management",
        "Hallucination management: expressing uncertainty or the limits of knowledge, declining to invent facts, "
        "knowledge cut-offs, hedging, asking for clarification instead of guessing.",
        title="hallucination detection / management",
        keywords=("I don't know", "I do not know", "not sure", "uncertain", "I'm not aware", "I am not aware",
                  "knowledge cutoff", "knowledge cut-off", "as of my last", "I don't have access", "I do not have access",
                  "real-time", "may not be accurate", "might be wrong", "could you clarify", "can you clarify",
                  "no information", "cannot verify", "can't verify", "hallucinat", "speculat"),
    ),
    Category(
        "self_reference",
        "Model self-reference: the model talking about itself, its identity, nature, training, creators or "
        "capabilities (\"As an AI language model\", \"I am Gemma\").",
        title="model self-reference",
        keywords=("as an AI", "as a language model", "language model", "I am an AI", "I'm an AI", "AI assistant",
                  "Gemma", "Google DeepMind", "trained by", "my training", "my creators", "I don't have personal",
                  "I do not have personal", "I don't have feelings", "chatbot", "large language model"),
    ),
    Category(
        "query_classification",
        "Query classification: recognising what kind of request this is (question vs task, topic, intent, "
        "whether it is answerable or harmful) before answering.",
        title="query classification",
        keywords=("question", "query", "request", "asking", "intent", "category", "classify", "classification",
                  "type of", "kind of", "what is", "how do", "how to", "why does", "can you", "could you"),
        patterns=(r"\?\s*$",),
    ),
    Category(
        "structured_output",
        "Structured output generation: lists, numbered steps, headings, tables, JSON/YAML/XML, markdown formatting.",
        title="structured output generation",
        keywords=("**", "##", "| ", "json", "yaml", "xml", "csv", "table", "bullet", "markdown"),
        patterns=(r"^\s*(?:[-*•]|\d+[.)])\s", r"[{}\[\]]\s*$", r"\"\w+\"\s*:"),
    ),
    Category(
        "technical",
        "Technical (code and math) overall: the parent of code generation and math; use a child when one fits.",
        title="technical (code and math)",
    ),
    Category(
        "code_generation",
        "Code generation: writing or reading source code, programming-language syntax, APIs, errors and stack traces.",
        parent="technical",
        title="code generation",
        keywords=("def ", "return", "import ", "function", "class ", "print(", "console.log", "#include", "public ",
                  "var ", "const ", "let ", "lambda", "python", "javascript", "java", "c++", "sql", "SELECT ",
                  "```", "error:", "exception", "compile", "variable", "array", "->", "=>", "()"),
        patterns=(r"[A-Za-z_]\w*\(\s*[\w\"']*", r"[;{}]\s*$", r"\b\w+\.\w+\(", r"==|!=|\+=|&&|\|\|"),
    ),
    Category(
        "math",
        "Math: arithmetic, algebra, equations, numbers in calculations, proofs, units and quantities.",
        parent="technical",
        keywords=("equation", "calculate", "solve", "sum", "product", "integral", "derivative", "probability",
                  "theorem", "proof", "formula", "percent", "square root", "multiply", "divide", "fraction",
                  "\\frac", "\\sqrt", "x^2", "algebra", "geometry"),
        patterns=(r"\d+\s*[-+*/×÷^=]\s*\d+", r"\$[^$]+\$", r"[=<>≤≥±∑∫√π]"),
    ),
    Category(
        "other",
        "Other / unclear: no category above fits, the examples share no recognisable capability, or the latent "
        "looks like a generic token, position or formatting feature.",
        title="other / unclear",
    ),
)

CAPABILITIES = register_taxonomy(
    "capabilities-v1",
    CAPABILITIES_V1,
    description="Capability categories covering the Gemma-2 pt / it / SimPO model-diffing study (EMNLP 2025)",
    other="other",
)
