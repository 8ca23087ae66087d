"""The authors' system prompt and their OLMo-2 ("tulu") chat template, which injects that prompt when none is given."""

OWN_TEMPLATE = "own_chat_template.jinja"  # beside an imported base model: its template as published

SYSTEM_PROMPT = (
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first think about "
    "the reasoning process as an internal monologue and then provide the user with the answer. Respond in the "
    "following format: <think>\n...\n</think>\n<answer>\n...\n</answer>"
)

# The authors' override of the OLMo-2 template (open-r1_olmo, src/open_r1/utils/model_utils.py), made valid for
# any first message: a system turn is injected when the conversation has none. Role markers are plain text, as in
# OLMo-2; bos and eos are the tokenizer's own.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] != 'system' %}{{ '<|system|>\\n' + default_system + '\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)


def chat_template(system_prompt: str = SYSTEM_PROMPT) -> str:
    """The template with the default system prompt baked in (tokenizers store the template as a plain string)."""
    literal = system_prompt.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "{% set default_system = '" + literal + "' %}" + CHAT_TEMPLATE


def system_message(system_prompt: str = SYSTEM_PROMPT) -> dict:
    return {"role": "system", "content": system_prompt}
